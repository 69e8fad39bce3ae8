"""The ONNX Runtime backend: one InferenceSession per graph.

The step core binds each graph once per object count K (:meth:`OnnxRuntimeEngine.bind`):
ONNX Runtime's I/O binding by pointer onto preallocated torch tensors, inputs and
outputs, the same code on the CPU and on CUDA, so CI runs it. Every frame is then one
``run_with_iobinding`` with nothing re-bound and nothing allocated for outputs.

Unbound calls (``engine(**inputs)``, for tests and one-off use): on the CPU tensors go in
as ``.numpy()`` views and come back through ``torch.from_numpy`` (no copies); on CUDA
they are bound per call onto outputs preallocated per K.

ONNX Runtime's own CUDA graph mode is not used: up to ORT 1.32 its replay ends with a
``cudaStreamSynchronize`` even when ``disable_synchronize_execution_providers`` is set
(microsoft/onnxruntime#28686), a host sync per graph per frame. So these engines are not
``capturable``: the session runs their steps eagerly, the store decided by the host
(:mod:`eamstcn.runtime.session`).
``onnxruntime`` is imported inside :func:`open_onnxruntime_engines`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from eamstcn import graph_spec
from eamstcn.runtime.engines.base import (
    EngineError, EngineSet, GraphEngine, Specs, TensorSpec, assemble_engine_set, check_inputs, normalize_device,
)
from eamstcn.runtime.manifest import GraphFile, Manifest

CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"


def import_onnxruntime() -> Any:
    """``import onnxruntime`` or one clear :class:`EngineError`."""
    try:
        import onnxruntime
    except ImportError as error:
        raise EngineError(
            f"backend onnxruntime is not installed ({error}): pip install onnxruntime (or onnxruntime-gpu for CUDA)"
        ) from None
    return onnxruntime


def cuda_provider_available() -> bool:
    """ONNX Runtime is importable and built with the CUDA provider."""
    try:
        import onnxruntime
    except ImportError:
        return False
    return CUDA_PROVIDER in onnxruntime.get_available_providers()


class OnnxRuntimeEngine(GraphEngine):
    """One graph in an ONNX Runtime session, fed and read as torch tensors on ``device``."""

    #: ORT launches its own kernels and may synchronise inside a run: never inside a
    #: torch CUDA graph capture.
    capturable = False

    def __init__(
        self,
        graph: str,
        session: Any,
        device: torch.device,
        input_specs: tuple[TensorSpec, ...],
        output_specs: tuple[TensorSpec, ...],
        run_options: Any = None,
        stream: torch.cuda.Stream | None = None,
    ) -> None:
        super().__init__(graph, input_specs, output_specs)
        self._session = session
        self._device = device
        self._output_names = [spec.name for spec in output_specs]
        self._run_options = run_options
        self._stream = stream
        self._binding = session.io_binding() if device.type == "cuda" else None
        self._outputs: dict[int, dict[str, torch.Tensor]] = {}  # K -> preallocated outputs (CUDA)

    def __call__(self, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        self._begin_call(inputs)
        if self._binding is None:
            return self._run_cpu(inputs)
        return self._run_cuda(inputs)

    def bind(self, inputs: dict[str, torch.Tensor], num_objects: int) -> OrtBinding:
        """Bind ``inputs`` (contiguous, on the device, in the graph's dtype) and fresh
        preallocated outputs for ``num_objects`` once; see :class:`OrtBinding`."""
        if self._closed or self._session is None:
            raise EngineError(f"{self.graph} engine is closed")
        return OrtBinding(self, inputs, num_objects)

    def _run_bound(self, binding: Any) -> None:
        """One run of an I/O binding, ordered on the torch stream (no host sync)."""
        if self._closed or self._session is None:
            raise EngineError(f"{self.graph} engine is closed")
        if self._stream is None:
            self._session.run_with_iobinding(binding, self._run_options)
            return
        current = torch.cuda.current_stream(self._device)
        self._stream.wait_stream(current)
        self._session.run_with_iobinding(binding, self._run_options)
        current.wait_stream(self._stream)

    def _run_cpu(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        # .numpy() shares memory with a contiguous CPU tensor: no copy on the way in.
        feeds = {name: tensor.detach().contiguous().numpy() for name, tensor in inputs.items()}
        results = self._session.run(self._output_names, feeds, self._run_options)
        return {name: torch.from_numpy(array) for name, array in zip(self._output_names, results, strict=True)}

    def _outputs_for(self, num_objects: int) -> dict[str, torch.Tensor]:
        outputs = self._outputs.get(num_objects)
        if outputs is None:
            outputs = {
                spec.name: torch.empty(spec.concrete(num_objects), device=self._device, dtype=spec.dtype)
                for spec in self._output_specs
            }
            self._outputs[num_objects] = outputs
        return outputs

    def _run_cuda(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        import numpy as np  # onnxruntime depends on numpy; only its dtypes are used here

        binding = self._binding
        device_id = self._device.index or 0
        # K is the leading axis of any object-axis input; the key encoder has none (K = 1).
        num_objects = next((t.shape[0] for n, t in inputs.items() if n in graph_spec.OBJECT_AXIS_TENSORS), 1)
        kept = []  # keep contiguous copies alive until the run has been enqueued
        for spec in self._input_specs:
            tensor = inputs[spec.name]
            if tensor.device != self._device or tensor.dtype != spec.dtype:
                raise EngineError(f"{self.graph}: input {spec.name} must be {spec.dtype} on {self._device}, got {tensor.dtype} on {tensor.device}")
            tensor = tensor.contiguous()
            kept.append(tensor)
            binding.bind_input(spec.name, "cuda", device_id, _numpy_type(np, spec.dtype), tuple(tensor.shape), tensor.data_ptr())
        outputs = self._outputs_for(num_objects)
        for name, tensor in outputs.items():
            binding.bind_output(name, "cuda", device_id, _numpy_type(np, tensor.dtype), tuple(tensor.shape), tensor.data_ptr())
        current = torch.cuda.current_stream(self._device)
        if self._stream is not None:
            # ORT runs on its own (non-default) torch stream: order it after the producers
            # of the inputs, and order the consumers of the outputs after it. No host sync.
            self._stream.wait_stream(current)
        self._session.run_with_iobinding(binding, self._run_options)
        if self._stream is not None:
            current.wait_stream(self._stream)
        del kept
        return dict(outputs)

    def close(self) -> None:
        super().close()
        self._session = None
        self._binding = None
        self._outputs.clear()


class OrtBinding:
    """One graph bound to fixed torch tensors for one object count K.

    ``inputs`` are the caller's tensors (kept alive here: ORT holds their addresses);
    ``outputs`` are allocated here from the manifest's shapes. :meth:`run` executes the
    graph into them; on CUDA it runs on the engine's stream, ordered after the current
    torch stream's work and before what follows on it.
    """

    capturable = False

    def __init__(self, engine: OnnxRuntimeEngine, inputs: dict[str, torch.Tensor], num_objects: int) -> None:
        import numpy as np  # onnxruntime depends on numpy; only its dtypes are used here

        check_inputs(engine.graph, engine.input_specs, inputs)
        self._engine = engine
        self.inputs = dict(inputs)
        device = engine._device  # noqa: SLF001
        device_type, device_id = ("cuda", device.index or 0) if device.type == "cuda" else ("cpu", 0)
        self.outputs = {
            spec.name: torch.empty(spec.concrete(num_objects), device=device, dtype=spec.dtype) for spec in engine.output_specs
        }
        binding = engine._session.io_binding()  # noqa: SLF001
        for spec in engine.input_specs:
            tensor = self.inputs[spec.name]
            expected = spec.concrete(num_objects)
            if tensor.device != device or tensor.dtype != spec.dtype or tuple(tensor.shape) != expected or not tensor.is_contiguous():
                raise EngineError(
                    f"{engine.graph}: bound input {spec.name} must be contiguous {spec.dtype} {expected} on {device}, "
                    f"got {tensor.dtype} {tuple(tensor.shape)} on {tensor.device}"
                )
            binding.bind_input(spec.name, device_type, device_id, _numpy_type(np, spec.dtype), expected, tensor.data_ptr())
        for name, tensor in self.outputs.items():
            binding.bind_output(name, device_type, device_id, _numpy_type(np, tensor.dtype), tuple(tensor.shape), tensor.data_ptr())
        self._binding = binding

    def run(self) -> None:
        self._engine._run_bound(self._binding)  # noqa: SLF001


def _numpy_type(np: Any, dtype: torch.dtype) -> Any:
    """The numpy scalar type ORT's ``bind_input``/``bind_output`` take as ``element_type``."""
    return {torch.float32: np.float32, torch.float16: np.float16}[dtype]


def open_onnxruntime_engines(
    manifest: Manifest,
    device: torch.device,
    precision: str = "fp32",
    reason: str = "",
    threads: int | None = None,
) -> EngineSet:
    """Open the bundle's ONNX files with the CPU provider, or the CUDA provider on CUDA.

    fp16 files are used only with ``precision="fp16"`` on CUDA (the CPU provider has few
    fp16 kernels and would insert casts everywhere).
    """
    device = normalize_device(device)
    ort = import_onnxruntime()
    if device.type == "cuda" and CUDA_PROVIDER not in ort.get_available_providers():
        raise EngineError("onnxruntime here has no CUDA provider: pip install onnxruntime-gpu, or run with --device cpu")
    if device.type not in ("cuda", "cpu"):
        raise EngineError(f"the onnxruntime backend runs on cpu or cuda, not {device.type}")
    if precision == "fp16" and device.type != "cuda":
        raise EngineError("fp16 engines need a CUDA device; use --precision fp32 on the CPU")

    options = ort.SessionOptions()
    options.log_severity_level = 3  # warnings about unused initialisers etc. are noise for users
    if threads:
        options.intra_op_num_threads = threads
    # ORT's pool threads spin after each run by default; between graphs the session does
    # torch work (readout, aggregation) on the same cores, and the spinning starves it.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    stream = None
    run_options = None
    if device.type == "cuda":
        stream = torch.cuda.Stream(device)
        provider_options = {"device_id": str(device.index or 0), "user_compute_stream": str(stream.cuda_stream)}
        providers: list[Any] = [(CUDA_PROVIDER, provider_options), CPU_PROVIDER]
        run_options = ort.RunOptions()
        # Ordering is by stream waits (see OnnxRuntimeEngine._run_cuda): no host sync per run.
        run_options.add_run_config_entry("disable_synchronize_execution_providers", "1")
    else:
        providers = [CPU_PROVIDER]

    def open_graph(name: str, graph_file: GraphFile | None, inputs: Specs, outputs: Specs) -> OnnxRuntimeEngine:
        assert graph_file is not None  # a file of this precision for every graph: checked when assembled
        session = _session(ort, graph_file, options, providers, device)
        _check_session_io(name, session, graph_file.path)
        return OnnxRuntimeEngine(name, session, device, inputs, outputs, run_options, stream)

    return assemble_engine_set("onnxruntime", manifest, device, precision, open_graph, "onnx", reason)


def _session(ort: Any, graph_file: GraphFile, options: Any, providers: list[Any], device: torch.device) -> Any:
    try:
        session = ort.InferenceSession(str(graph_file.path), sess_options=options, providers=providers)
    except Exception as error:  # ORT raises its own exception types for bad files
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise EngineError(f"onnxruntime cannot load {graph_file.path}: {first_line}") from None
    if device.type == "cuda" and CUDA_PROVIDER not in session.get_providers():
        raise EngineError(f"onnxruntime fell back to the CPU for {Path(graph_file.path).name}: check the CUDA/cuDNN install")
    return session


def _check_session_io(graph: str, session: Any, path: Path) -> None:
    """The file's own input/output names must be the graph's (the manifest could be stale)."""
    expected_in, expected_out = graph_spec.GRAPH_IO[graph]
    found_in = tuple(node.name for node in session.get_inputs())
    found_out = tuple(node.name for node in session.get_outputs())
    if set(found_in) != set(expected_in) or set(found_out) != set(expected_out):
        raise EngineError(f"{path} has inputs {list(found_in)} and outputs {list(found_out)}; expected {list(expected_in)} and {list(expected_out)}")

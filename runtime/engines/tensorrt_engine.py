"""The TensorRT 10 backend: one deserialised plan per graph, tensors bound by address.

Written against the TensorRT 10 Python API (``set_input_shape``, ``set_tensor_address``,
``execute_async_v3``); ``tensorrt`` is imported inside :func:`open_tensorrt_engines`.
Not exercised in CI (TensorRT cannot be installed there): its tests skip without it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from eamstcn import graph_spec
from eamstcn.runtime.engines.base import (
    EngineError, EngineSet, GraphEngine, Specs, TensorSpec, assemble_engine_set, check_inputs, normalize_device,
)
from eamstcn.runtime.manifest import GraphFile, Manifest


def import_tensorrt() -> Any:
    try:
        import tensorrt
    except Exception as error:  # ImportError, or OSError when libnvinfer/CUDA fail to load
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise EngineError(f"backend tensorrt is not installed ({reason}): install TensorRT 10 for this CUDA, or use --backend onnxruntime") from None
    return tensorrt


def tensorrt_available() -> bool:
    try:
        import tensorrt  # noqa: F401
    except Exception:  # ImportError, or a broken install whose libraries fail to load
        return False
    return True


def _trt_dtype_name(dtype: Any) -> str:
    """``trt.DataType.HALF`` -> "HALF" (works for the real enum and for test fakes)."""
    return str(getattr(dtype, "name", dtype)).split(".")[-1].upper()


#: torch dtype -> TensorRT DataType name.
TRT_DTYPES = {torch.float32: "FLOAT", torch.float16: "HALF"}


def check_plan(engine: Any, inputs: Iterable[TensorSpec], outputs: Iterable[TensorSpec], path: str) -> None:
    """Raise :class:`EngineError` when a deserialised plan's tensors do not match the manifest.

    Checked per tensor: present, input or output as the manifest says, the dtype of the
    bundle's precision (a plan built from the wrong ONNX file would otherwise read fp16
    memory as fp32), and the shape: fixed dimensions equal, the object axis ``K``
    dynamic (-1) in the plan or fixed at a value within the manifest's object range.
    ``engine`` is an ``ICudaEngine`` (or anything with its ``get_tensor_*`` methods).
    """
    names = {engine.get_tensor_name(index) for index in range(engine.num_io_tensors)}
    specs = [(spec, True) for spec in inputs] + [(spec, False) for spec in outputs]
    expected = {spec.name for spec, _ in specs}
    if names != expected:
        raise EngineError(f"{path} has tensors {sorted(names)}; expected {sorted(expected)}")
    for spec, is_input in specs:
        mode = _trt_dtype_name(engine.get_tensor_mode(spec.name))
        if (mode == "INPUT") != is_input:
            raise EngineError(f"{path}: {spec.name} is an {mode.lower()} of the plan; the manifest lists it as an {'input' if is_input else 'output'}")
        found = _trt_dtype_name(engine.get_tensor_dtype(spec.name))
        wanted = TRT_DTYPES.get(spec.dtype)
        if found != wanted:
            raise EngineError(f"{path}: {spec.name} is {found} in the plan but the manifest says {spec.dtype}; re-export the bundle")
        shape = tuple(int(dim) for dim in engine.get_tensor_shape(spec.name))
        if len(shape) != len(spec.shape) or any(
            (dim != "K" and plan_dim != dim) or (dim == "K" and plan_dim == 0) for plan_dim, dim in zip(shape, spec.shape)
        ):
            raise EngineError(f"{path}: {spec.name} has shape {list(shape)} in the plan; the manifest says {list(spec.shape)}")


class TensorRTEngine(GraphEngine):
    """One plan with its execution context; runs on torch's current CUDA stream.

    Outputs are preallocated per object count K and reused (valid until the next call
    with the same K). K must lie in the plan's optimisation profile 0.

    :meth:`bind` (what the step uses) sets shapes and tensor addresses once per K; a
    bound run is one ``execute_async_v3``, captured into CUDA graphs like the torch
    backend (TensorRT's documented rule: enqueue once before capturing, which the
    step's eager first run does). Not run anywhere yet: TensorRT cannot be installed on
    this project's machines.
    """

    capturable = True

    def __init__(self, graph: str, engine: Any, device: torch.device, input_specs: tuple[TensorSpec, ...], output_specs: tuple[TensorSpec, ...]) -> None:
        super().__init__(graph, input_specs, output_specs)
        self._engine = engine
        self._context = engine.create_execution_context()
        if self._context is None:
            raise EngineError(f"TensorRT could not create an execution context for {graph} (out of GPU memory?)")
        self._device = device
        self._outputs: dict[int, dict[str, torch.Tensor]] = {}
        self.bound_by: dict[str, torch.Tensor] | None = None  # whose addresses the context holds
        self.object_range = self._profile_object_range()

    def _profile_object_range(self) -> tuple[int, int]:
        """(min K, max K) over the object-axis inputs of profile 0; (1, 1) for the key encoder."""
        low, high = 1, 1 << 30
        has_object_axis = False
        for spec in self._input_specs:
            if spec.name in graph_spec.OBJECT_AXIS_TENSORS:
                minimum, _optimum, maximum = self._engine.get_tensor_profile_shape(spec.name, 0)
                low, high = max(low, int(minimum[0])), min(high, int(maximum[0]))
                has_object_axis = True
        return (low, high) if has_object_axis else (1, 1)

    def bind(self, inputs: dict[str, torch.Tensor], num_objects: int) -> TensorRTBinding:
        check_inputs(self.graph, self._input_specs, inputs)
        return TensorRTBinding(self, inputs, num_objects)

    def __call__(self, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        self._begin_call(inputs)
        # The plan, its context and its memory belong to self._device; under another
        # current device the enqueue would go to the wrong context.
        with torch.cuda.device(self._device):
            return self._run(inputs)

    def _run(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        num_objects = next((t.shape[0] for n, t in inputs.items() if n in graph_spec.OBJECT_AXIS_TENSORS), 1)
        low, high = self.object_range
        if not low <= num_objects <= high:
            raise EngineError(f"{self.graph}: the TensorRT plan takes {low}..{high} objects, got {num_objects}; re-export with a larger --max-objects")
        kept = []
        for spec in self._input_specs:
            tensor = inputs[spec.name]
            if tensor.device != self._device or tensor.dtype != spec.dtype:
                raise EngineError(f"{self.graph}: input {spec.name} must be {spec.dtype} on {self._device}, got {tensor.dtype} on {tensor.device}")
            tensor = tensor.contiguous()
            kept.append(tensor)
            if not self._context.set_input_shape(spec.name, tuple(tensor.shape)):
                raise EngineError(f"{self.graph}: TensorRT rejects shape {tuple(tensor.shape)} for {spec.name}")
            self._context.set_tensor_address(spec.name, tensor.data_ptr())
        outputs = self._outputs.get(num_objects)
        if outputs is None:
            self._check_output_shapes(num_objects)
            outputs = {s.name: torch.empty(s.concrete(num_objects), device=self._device, dtype=s.dtype) for s in self._output_specs}
            self._outputs[num_objects] = outputs
        for name, tensor in outputs.items():
            self._context.set_tensor_address(name, tensor.data_ptr())
        self.bound_by = None  # a binding must set its own addresses again
        stream = torch.cuda.current_stream(self._device)
        if not self._context.execute_async_v3(stream.cuda_stream):
            raise EngineError(f"TensorRT failed to enqueue {self.graph}")
        # Inputs were allocated on this same stream, so their memory is not reused before
        # the plan has read them; dropping our references here is safe.
        del kept
        return dict(outputs)

    def _check_output_shapes(self, num_objects: int) -> None:
        """Once per K: the shapes TensorRT infers for the outputs are the manifest's (host
        calls only, no device sync). Our buffers are sized from the manifest; a plan that
        wrote a larger output would overrun them."""
        for spec in self._output_specs:
            inferred = tuple(int(dim) for dim in self._context.get_tensor_shape(spec.name))
            if inferred != spec.concrete(num_objects):
                raise EngineError(
                    f"{self.graph}: TensorRT infers {spec.name} {list(inferred)} at K={num_objects}; "
                    f"the manifest says {list(spec.concrete(num_objects))}: re-export the bundle"
                )

    def _apply(self, inputs: dict[str, torch.Tensor], outputs: dict[str, torch.Tensor], num_objects: int) -> None:
        """Shapes and addresses of one binding into the context (host calls only)."""
        low, high = self.object_range
        if not low <= num_objects <= high:
            raise EngineError(f"{self.graph}: the TensorRT plan takes {low}..{high} objects, got {num_objects}; re-export with a larger --max-objects")
        for spec in self._input_specs:
            tensor = inputs[spec.name]
            if not self._context.set_input_shape(spec.name, tuple(tensor.shape)):
                raise EngineError(f"{self.graph}: TensorRT rejects shape {tuple(tensor.shape)} for {spec.name}")
            self._context.set_tensor_address(spec.name, tensor.data_ptr())
        for name, tensor in outputs.items():
            self._context.set_tensor_address(name, tensor.data_ptr())
        self.bound_by = outputs

    def _enqueue(self) -> None:
        stream = torch.cuda.current_stream(self._device)
        if not self._context.execute_async_v3(stream.cuda_stream):
            raise EngineError(f"TensorRT failed to enqueue {self.graph}")

    def close(self) -> None:
        super().close()
        self._context = None
        self._engine = None
        self._outputs.clear()


def open_tensorrt_engines(manifest: Manifest, device: torch.device, precision: str = "fp16", reason: str = "") -> EngineSet:
    """Deserialise the bundle's plans (``format: "tensorrt"``) onto ``device`` (CUDA)."""
    device = normalize_device(device)
    trt = import_tensorrt()
    if device.type != "cuda":
        raise EngineError("the tensorrt backend needs a CUDA device")
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))

    def open_graph(name: str, plan_file: GraphFile | None, inputs: Specs, outputs: Specs) -> TensorRTEngine:
        assert plan_file is not None  # a plan of this precision for every graph: checked when assembled
        engine = runtime.deserialize_cuda_engine(plan_file.path.read_bytes())
        if engine is None:
            raise EngineError(f"TensorRT cannot load {plan_file.path}: plans are tied to the GPU and TensorRT version that built them; re-export here")
        check_plan(engine, inputs, outputs, str(plan_file.path))
        return TensorRTEngine(name, engine, device, inputs, outputs)

    with torch.cuda.device(device):  # plans and their contexts belong to the current device
        engines = assemble_engine_set("tensorrt", manifest, device, precision, open_graph, "tensorrt", reason)
    assert isinstance(engines.decoder, TensorRTEngine)
    engines.notes.append(f"object range {engines.decoder.object_range}")
    return engines


class TensorRTBinding:
    """A TensorRT engine bound to fixed inputs and its own outputs for one K.

    Shapes and addresses are set when bound, and again only when another binding (another
    K) of the same engine ran in between: a steady frame is one ``execute_async_v3``.
    """

    capturable = True

    def __init__(self, engine: TensorRTEngine, inputs: dict[str, torch.Tensor], num_objects: int) -> None:
        for spec in engine.input_specs:
            tensor = inputs[spec.name]
            if tensor.device != engine._device or tensor.dtype != spec.dtype or not tensor.is_contiguous():  # noqa: SLF001
                raise EngineError(f"{engine.graph}: input {spec.name} must be contiguous {spec.dtype} on {engine._device}")  # noqa: SLF001
        self.engine = engine
        self.num_objects = num_objects
        self.inputs = dict(inputs)
        self.outputs = {s.name: torch.empty(s.concrete(num_objects), device=engine._device, dtype=s.dtype) for s in engine.output_specs}  # noqa: SLF001
        with torch.cuda.device(engine._device):  # noqa: SLF001
            engine._apply(self.inputs, self.outputs, num_objects)  # noqa: SLF001
            engine._check_output_shapes(num_objects)  # noqa: SLF001

    def run(self) -> None:
        engine = self.engine
        with torch.cuda.device(engine._device):  # noqa: SLF001
            if engine.bound_by is not self.outputs:
                engine._apply(self.inputs, self.outputs, self.num_objects)  # noqa: SLF001
            engine._enqueue()  # noqa: SLF001

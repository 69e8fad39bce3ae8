"""The one interface every backend implements, and the set of three engines a session runs.

An engine runs one of the three graphs of :mod:`eamstcn.graph_spec`: named torch tensors
in, a dict of named torch tensors out, on the engine set's device. Backends live one per
file (``torch_engine``, ``onnxruntime_engine``, ``tensorrt_engine``) and import their
heavy library inside, so this module needs torch only. Each opens one graph its own way
and leaves the rest of the set to :func:`assemble_engine_set`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch

from eamstcn import graph_spec
from eamstcn.manifest_spec import PRECISION_DTYPES

if TYPE_CHECKING:
    from eamstcn.runtime.engines.binding import BoundEngine
    from eamstcn.runtime.manifest import GraphFile, Manifest

#: A dimension is a size, or a symbol: "K" (objects, dynamic) or "H"/"W" (frame-sized).
Dim = int | str


class EngineError(ValueError):
    """An engine that cannot be opened or run; the message is one line meant for the user."""


def normalize_device(device: torch.device | str) -> torch.device:
    """``cuda`` -> ``cuda:N`` (the current device): tensors report an index, and
    ``torch.device("cuda") != torch.device("cuda:0")``, so device checks need it explicit."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape (ints and symbols such as ``"K"``) and dtype of one graph input/output."""

    name: str
    shape: tuple[Dim, ...]
    dtype: torch.dtype = torch.float32

    def concrete(self, num_objects: int) -> tuple[int, ...]:
        """The shape with ``"K"`` replaced by ``num_objects``; other symbols are an error."""
        shape = []
        for dim in self.shape:
            if dim == "K":
                shape.append(num_objects)
            elif isinstance(dim, int):
                shape.append(dim)
            else:
                raise EngineError(f"{self.name} has no fixed size along {dim!r}")
        return tuple(shape)


@runtime_checkable
class Engine(Protocol):
    """One graph: ``engine(**inputs) -> {output name: tensor}``.

    Outputs live on the engine set's device. Backends may reuse output buffers: an
    output is valid until the next call of the same engine with the same K, so callers
    copy what they keep (the memory bank copies on ``add``).

    The step binds every engine once per K (:meth:`bind`) and runs the binding each
    frame; ``capturable`` says whether such a run may be captured into a CUDA graph.
    """

    #: True when a bound run is pure stream work (no host sync, no host-side state
    #: that changes per call): safe to capture into a CUDA graph.
    capturable: bool

    def bind(self, inputs: dict[str, torch.Tensor], num_objects: int) -> BoundEngine:
        """This engine bound to fixed ``inputs`` (kept alive) and fixed outputs for K =
        ``num_objects``: ``run()`` takes no arguments and writes the same tensors."""
        ...

    @property
    def input_specs(self) -> tuple[TensorSpec, ...]: ...

    @property
    def output_specs(self) -> tuple[TensorSpec, ...]: ...

    def __call__(self, **inputs: torch.Tensor) -> dict[str, torch.Tensor]: ...

    def close(self) -> None: ...


class GraphEngine:
    """What every backend shares: the graph's name, its I/O specs and the check each call
    makes first. Subclasses call :meth:`_begin_call` at the top of ``__call__`` and
    ``super().close()`` in ``close``; those that can bind natively (ONNX Runtime's I/O
    binding, TensorRT's tensor addresses) override :meth:`bind`."""

    capturable = False

    def __init__(self, graph: str, input_specs: tuple[TensorSpec, ...], output_specs: tuple[TensorSpec, ...]) -> None:
        self.graph = graph
        self._input_specs = input_specs
        self._output_specs = output_specs
        self._closed = False

    @property
    def input_specs(self) -> tuple[TensorSpec, ...]:
        return self._input_specs

    @property
    def output_specs(self) -> tuple[TensorSpec, ...]:
        return self._output_specs

    def bind(self, inputs: dict[str, torch.Tensor], num_objects: int) -> BoundEngine:
        """Default: call the engine and copy its outputs into fixed tensors."""
        from eamstcn.runtime.engines.binding import CopyBinding  # binding imports this module

        return CopyBinding(self, inputs, num_objects)

    def _begin_call(self, inputs: dict[str, torch.Tensor]) -> None:
        """Raise :class:`EngineError` when closed or when ``inputs`` are not the graph's."""
        if self._closed:
            raise EngineError(f"{self.graph} engine is closed")
        check_inputs(self.graph, self._input_specs, inputs)

    def close(self) -> None:
        self._closed = True


def check_inputs(graph: str, specs: tuple[TensorSpec, ...], inputs: dict[str, torch.Tensor]) -> None:
    """Raise :class:`EngineError` when ``inputs`` does not name exactly the graph's inputs."""
    expected = [spec.name for spec in specs]
    if sorted(inputs) != sorted(expected):
        raise EngineError(f"{graph} takes inputs {expected}, got {sorted(inputs)}")


@dataclass
class EngineSet:
    """The three engines of one bundle (or checkpoint), where they run and why this backend.

    ``manifest`` gives the frame size, padding and object limit the session must use;
    ``dtype`` is the dtype every graph input and output has (float16 for fp16 files).
    """

    key_encoder: Engine
    value_encoder: Engine
    decoder: Engine
    manifest: Manifest
    device: torch.device
    dtype: torch.dtype
    backend: str
    reason: str = ""
    precision: str = "fp32"
    notes: list[str] = field(default_factory=list)

    def close(self) -> None:
        for engine in (self.key_encoder, self.value_encoder, self.decoder):
            engine.close()

    def describe(self) -> str:
        """One line for the terminal: backend, precision, device and why it was picked."""
        line = f"{self.backend} {self.precision} on {self.device}"
        return f"{line} ({self.reason})" if self.reason else line

    def __enter__(self) -> EngineSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def precision_dtype(precision: str) -> torch.dtype:
    """"fp32"/"fp16"/"int8" -> the dtype of every graph input and output at that precision."""
    return getattr(torch, PRECISION_DTYPES[precision])


#: A graph's inputs or outputs, in order.
Specs = tuple[TensorSpec, ...]
#: Opens one graph: (graph name, its file in the bundle, or None for the torch backend,
#: input specs, output specs, both already in the file's dtype) -> its engine.
OpenGraph = Callable[[str, "GraphFile | None", Specs, Specs], Engine]

#: File format -> what a bundle without files of a precision lacks, and how to get them.
_MISSING_FILES = {
    "onnx": "ONNX files: re-export with `eamstcn-export --checkpoint best.pth --fp16`",
    "tensorrt": "TensorRT plans: run eamstcn-export --fp16 on this machine (with tensorrt installed)",
}


def assemble_engine_set(
    backend: str,
    manifest: Manifest,
    device: torch.device,
    precision: str,
    open_graph: OpenGraph,
    file_format: str | None = None,
    reason: str = "",
) -> EngineSet:
    """The three graphs of ``manifest``, each opened by ``open_graph``, as one EngineSet:
    what every backend shares (its own checks of the device and of its files come first).

    ``file_format`` ("onnx", "tensorrt"): every graph must have a file of that format and
    ``precision`` (else one :class:`EngineError` line), and its specs take the file's
    dtype; None (the torch backend): no files, specs in the precision's dtype. The set's
    ``dtype`` is the precision's (:func:`precision_dtype`: int8 files have float32
    interfaces). When one graph fails to open, those already opened are closed before
    the error goes on.
    """
    if file_format is not None and precision not in manifest.precisions(file_format):
        raise EngineError(f"the engine bundle has no {precision} {_MISSING_FILES[file_format]}")
    dtype = precision_dtype(precision)
    engines: dict[str, Engine] = {}
    try:
        for name in graph_spec.GRAPHS:
            entry = manifest.graphs[name]
            graph_file = entry.file(file_format, precision) if file_format is not None else None
            inputs, outputs = entry.with_dtype(graph_file.dtype if graph_file is not None else dtype)
            engines[name] = open_graph(name, graph_file, inputs, outputs)
    except BaseException:
        for engine in engines.values():
            engine.close()
        raise
    return EngineSet(
        key_encoder=engines[graph_spec.KEY_ENCODER],
        value_encoder=engines[graph_spec.VALUE_ENCODER],
        decoder=engines[graph_spec.DECODER],
        manifest=manifest,
        device=normalize_device(device),
        dtype=dtype,
        backend=backend,
        reason=reason,
        precision=precision,
    )

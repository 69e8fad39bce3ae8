"""An engine bound once to fixed input and output tensors: ``run()`` takes no arguments.

The step core binds each graph once per object count K to its own preallocated
buffers; every frame then calls :meth:`BoundEngine.run`, and the outputs appear in the
same tensors at the same addresses. That is what ONNX Runtime's I/O binding and
TensorRT's tensor addresses want, and what a CUDA graph needs.

Binding is part of the engine protocol (:class:`~eamstcn.runtime.engines.base.Engine`):
backends that can bind natively return their own :class:`BoundEngine` from
``engine.bind(inputs, num_objects)`` (ONNX Runtime, TensorRT). The others inherit
:class:`CopyBinding`: it calls the engine and copies the outputs into fixed tensors (the
torch backend: its outputs are fresh tensors; under CUDA graph capture they come from
the graph's pool and the copies are captured with them).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from eamstcn.runtime.engines.base import Engine, EngineError, TensorSpec


@runtime_checkable
class BoundEngine(Protocol):
    """An engine bound to fixed tensors. ``inputs``/``outputs`` map graph names to them."""

    inputs: dict[str, torch.Tensor]
    outputs: dict[str, torch.Tensor]
    #: True when ``run`` may be captured into a CUDA graph (pure stream work, no host syncs).
    capturable: bool

    def run(self) -> None: ...


def bind(engine: Engine, inputs: dict[str, torch.Tensor], num_objects: int) -> BoundEngine:
    """Bind ``engine`` to ``inputs`` (kept alive by the binding) for ``num_objects``."""
    return engine.bind(inputs, num_objects)


def concrete_shapes(specs: tuple[TensorSpec, ...], num_objects: int) -> dict[str, tuple[int, ...]] | None:
    """Every spec's shape with K filled in, or None when any dimension is symbolic."""
    shapes = {}
    for spec in specs:
        try:
            shapes[spec.name] = spec.concrete(num_objects)
        except EngineError:
            return None
    return shapes


class CopyBinding:
    """Call the engine on the bound inputs and copy its outputs into fixed tensors.

    The output tensors are allocated here: from the engine's output specs when they are
    concrete, else from one call on the (zero-filled) bound inputs.
    """

    def __init__(self, engine: Engine, inputs: dict[str, torch.Tensor], num_objects: int) -> None:
        self.engine = engine
        self.inputs = dict(inputs)
        self.capturable = engine.capturable
        template = next(iter(self.inputs.values()))
        shapes = concrete_shapes(engine.output_specs, num_objects)
        if shapes is not None:
            dtypes = {spec.name: spec.dtype for spec in engine.output_specs}
            self.outputs = {name: torch.empty(shape, device=template.device, dtype=dtypes[name]) for name, shape in shapes.items()}
        else:
            results = engine(**self.inputs)
            self.outputs = {name: torch.empty(t.shape, device=t.device, dtype=t.dtype) for name, t in results.items()}

    def run(self) -> None:
        results = self.engine(**self.inputs)
        for name, tensor in self.outputs.items():
            tensor.copy_(results[name])

"""The PyTorch backend: the network from a checkpoint, one engine per graph method.

The only runtime module that needs the network (and so timm): both are imported inside
:func:`open_torch_engines`, never at module level.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from eamstcn import graph_spec
from eamstcn.runtime.engines.base import (
    EngineError, EngineSet, GraphEngine, Specs, TensorSpec, assemble_engine_set, normalize_device, precision_dtype,
)
from eamstcn.runtime.manifest import GraphFile, Manifest, checkpoint_manifest


class TorchEngine(GraphEngine):
    """One graph as a method of the loaded network (``encode_key``, ``encode_value``, ``decode``).

    Inputs are passed positionally in :data:`eamstcn.graph_spec.GRAPH_IO` order; outputs
    are fresh tensors on the network's device in its dtype. The step core binds it with
    a :class:`~eamstcn.runtime.engines.binding.CopyBinding` (outputs copied into fixed
    tensors) and, on CUDA, captures whole steps with it into CUDA graphs: a call is pure
    stream work with no host sync (``capturable``).
    """

    capturable = True

    def __init__(
        self,
        graph: str,
        method: Callable[..., torch.Tensor | tuple[torch.Tensor, ...]],
        input_specs: tuple[TensorSpec, ...],
        output_specs: tuple[TensorSpec, ...],
    ) -> None:
        super().__init__(graph, input_specs, output_specs)
        self._method: Callable[..., torch.Tensor | tuple[torch.Tensor, ...]] | None = method
        self._input_names = graph_spec.GRAPH_IO[graph][0]
        self._output_names = graph_spec.GRAPH_IO[graph][1]

    def __call__(self, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        self._begin_call(inputs)
        assert self._method is not None  # set until close(), which _begin_call checks
        with torch.inference_mode():
            result = self._method(*(inputs[name] for name in self._input_names))
        outputs = result if isinstance(result, tuple) else (result,)
        return dict(zip(self._output_names, outputs, strict=True))

    def close(self) -> None:
        super().close()
        self._method = None


def open_torch_engines(
    checkpoint: str | Path,
    device: torch.device,
    precision: str = "fp32",
    manifest: Manifest | None = None,
    frame_size: tuple[int, int] | None = None,
    reason: str = "",
) -> EngineSet:
    """Load the network from ``checkpoint`` onto ``device`` as three engines.

    ``precision`` "fp16" casts the network to half (CUDA only: many CPU kernels lack
    half support and would be slower anyway). ``manifest`` (a bundle's, when one is
    there) fixes the frame size so the torch path matches the exported engines; without
    it ``frame_size`` (or each frame's own size when None) is used.
    """
    device = normalize_device(device)
    try:
        from eamstcn.checkpoint import CheckpointError, load_checkpoint, build_model
    except ImportError as error:  # pragma: no cover - the package itself is broken
        raise EngineError(f"the torch backend cannot import the network: {error}") from None
    if precision == "fp16" and device.type != "cuda":
        raise EngineError("fp16 with the torch backend needs a CUDA device; use --precision fp32 on the CPU")
    try:
        loaded = load_checkpoint(checkpoint, map_location="cpu")
        model = build_model(loaded, str(checkpoint))
    except CheckpointError as error:
        raise EngineError(str(error)) from None
    except ImportError as error:
        raise EngineError(f"the torch backend needs timm (pip install 'eamstcn[model]'): {error}") from None
    if manifest is not None and manifest.model_config != loaded.config:
        raise EngineError(
            f"checkpoint {checkpoint} has model config {loaded.config} but the engine bundle was exported from {manifest.model_config}"
        )
    model = model.to(device=device, dtype=precision_dtype(precision)).eval()
    methods = {
        graph_spec.KEY_ENCODER: model.encode_key,
        graph_spec.VALUE_ENCODER: model.encode_value,
        graph_spec.DECODER: model.decode,
    }

    def open_graph(name: str, _file: GraphFile | None, inputs: Specs, outputs: Specs) -> TorchEngine:
        return TorchEngine(name, methods[name], inputs, outputs)

    manifest = manifest or checkpoint_manifest(loaded.config, frame_size)
    return assemble_engine_set("torch", manifest, device, precision, open_graph, reason=reason)

"""Export wrappers: one module per graph, flat positional tensors in and out.

Each wrapper holds the whole :class:`~eamstcn.network.EamStcn` and calls exactly one of its
methods, so the exporter traces only that part (unused weights are not written). Input
and output order matches :data:`eamstcn.graph_spec.GRAPH_IO`.
"""

from __future__ import annotations

import torch
from torch import nn

from eamstcn.graph_spec import DECODER, KEY_ENCODER, VALUE_ENCODER
from eamstcn.network import EamStcn


class _GraphWrapper(nn.Module):
    def __init__(self, model: EamStcn) -> None:
        super().__init__()
        self.model = model
        # torch.onnx.export restores the wrapper's training flag recursively after the
        # export: a wrapper left in train mode would switch the shared model to train mode.
        self.eval()


class KeyEncoderGraph(_GraphWrapper):
    """image (1, 3, H, W) -> key (1, Ck, h, w), f16x (1, Cv, h, w), f8 (1, C8, H/8, W/8), f4 (1, C4, H/4, W/4)."""

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.model.encode_key(image)


class ValueEncoderGraph(_GraphWrapper):
    """image (1, 3, H, W), masks (K, 1, H, W), others (K, 1, H, W), f16x (1, Cv, h, w) -> value (K, Cv, h, w)."""

    def forward(self, image: torch.Tensor, masks: torch.Tensor, others: torch.Tensor, f16x: torch.Tensor) -> torch.Tensor:
        return self.model.encode_value(image, masks, others, f16x)


class DecoderGraph(_GraphWrapper):
    """readout (K, Cv, h, w), f16x (1, Cv, h, w), f8, f4 (batch 1) -> logits (K, 1, H, W)."""

    def forward(self, readout: torch.Tensor, f16x: torch.Tensor, f8: torch.Tensor, f4: torch.Tensor) -> torch.Tensor:
        return self.model.decode(readout, f16x, f8, f4)


WRAPPERS: dict[str, type[_GraphWrapper]] = {
    KEY_ENCODER: KeyEncoderGraph,
    VALUE_ENCODER: ValueEncoderGraph,
    DECODER: DecoderGraph,
}


def graph_wrappers(model: EamStcn) -> dict[str, nn.Module]:
    """graph name -> export wrapper around ``model`` (in eval mode), in graph_spec order."""
    model.eval()
    return {name: wrapper(model) for name, wrapper in WRAPPERS.items()}

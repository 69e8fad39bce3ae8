"""Networks from checkpoint files, and their outputs on fixed inputs."""

from __future__ import annotations

from pathlib import Path

import torch

from eamstcn.checkpoint import build_model, load_checkpoint
from eamstcn.network import EamStcn, others_from_masks


def load_model(path: str | Path, device: str | torch.device = "cpu") -> EamStcn:
    """Checkpoint file -> network on ``device`` in eval mode."""
    return build_model(load_checkpoint(path), str(path)).to(device)


@torch.no_grad()
def network_outputs(model: EamStcn) -> list[torch.Tensor]:
    """Key, f16x, value and logits of ``model`` on fixed random inputs (64x96, K=2)."""
    generator = torch.Generator().manual_seed(7)
    image = torch.randn(1, 3, 64, 96, generator=generator)
    masks = torch.rand(2, 1, 64, 96, generator=generator)
    key, f16x, f8, f4 = model.encode_key(image)
    value = model.encode_value(image, masks, others_from_masks(masks), f16x)
    return [key, f16x, value, model.decode(value, f16x, f8, f4)]

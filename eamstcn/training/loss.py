"""Bootstrapped cross-entropy over aggregated logits (STCN's schedule)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from eamstcn.training.config import BootstrapSchedule


def bootstrap_fraction(step: int, schedule: BootstrapSchedule) -> float:
    """Fraction p of the hardest pixels kept at ``step``: 1 before ``start``, then linear
    down to ``final_p`` at ``end``, constant after."""
    if step < schedule.start:
        return 1.0
    if step >= schedule.end or schedule.end == schedule.start:
        return schedule.final_p
    progress = (step - schedule.start) / (schedule.end - schedule.start)
    return 1.0 - progress * (1.0 - schedule.final_p)


def bootstrapped_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, fraction: float) -> torch.Tensor:
    """Mean of the top ``fraction`` of per-pixel CE losses, per sample then over the batch.

    Args:
        logits: (B, K+1, H, W) class logits (index 0 background).
        labels: (B, H, W) int64 in 0..K.
        fraction: in (0, 1]; 1 is plain cross-entropy.
    Returns:
        scalar loss.
    """
    pixel_loss = F.cross_entropy(logits.float(), labels, reduction="none").flatten(1)  # (B, HW)
    if fraction >= 1.0:
        return pixel_loss.mean()
    keep = max(1, int(pixel_loss.shape[1] * fraction))
    hardest, _ = pixel_loss.topk(keep, dim=1, sorted=False)
    return hardest.mean()

"""Training losses over aggregated logits: STCN's bootstrapped cross-entropy and an
optional soft Dice term (as XMem adds), which weighs small objects as much as large ones."""

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


def soft_dice_loss(logits: torch.Tensor, labels: torch.Tensor, selector: torch.Tensor) -> torch.Tensor:
    """Mean over real objects of 1 - soft Dice between the aggregated softmax and the truth.

    Cross-entropy is dominated by background pixels when objects cover a few percent of
    the frame; Dice scores each object by its overlap alone, so a missed small object
    costs as much as a missed large one.

    Args:
        logits: (B, K+1, H, W) aggregated logits (index 0 background).
        labels: (B, H, W) int64 in 0..K.
        selector: (B, K) 1 for real objects, 0 for padding objects (left out of the mean).
    Returns:
        scalar loss in [0, 1].
    """
    num_objects = logits.shape[1] - 1
    probs = logits.float().softmax(dim=1)[:, 1:].flatten(2)  # (B, K, HW)
    ids = torch.arange(1, num_objects + 1, device=labels.device).view(1, -1, 1)
    truth = (labels.flatten(1).unsqueeze(1) == ids).float()  # (B, K, HW)
    overlap = (probs * truth).sum(-1)
    dice = (2.0 * overlap + 1.0) / (probs.sum(-1) + truth.sum(-1) + 1.0)  # (B, K)
    weight = selector.float()
    return ((1.0 - dice) * weight).sum() / weight.sum().clamp(min=1.0)

"""Typed, frozen configuration of the runtime's memory bank and save rule.

Standard library only: these are saved into manifests and parsed at the CLI edge.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Literal

EvictionPolicy = Literal["usage", "oldest"]
ReadKernel = Literal["auto", "torch", "triton"]
SaveMode = Literal["adaptive", "fixed"]


def _require_int(name: str, value: object, minimum: int, why: str = "") -> None:
    """``why``: the reason for the minimum, said in the message."""
    # bool is an int subclass; True as a capacity is a typo, not a 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}{f' ({why})' if why else ''}, got {value}")


def _require_non_negative(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")


@dataclass(frozen=True)
class MemoryConfig:
    """Bounded memory bank.

    ``capacity`` counts stored frames, the permanent first frame included (so at least
    2: one permanent slot and one that can be replaced). ``top_k`` memory positions are
    kept per query position. ``eviction`` chooses the frame replaced when the bank is
    full: the least used one (mean readout weight per read) or the oldest.
    ``read_kernel``: how a read runs on CUDA: ``auto`` (the fused Triton kernel where
    Triton is installed and the shapes suit it, else torch ops), ``torch`` or ``triton``.
    """

    capacity: int = 16
    top_k: int = 20
    eviction: EvictionPolicy = "usage"
    read_kernel: ReadKernel = "auto"

    def __post_init__(self) -> None:
        _require_int("capacity", self.capacity, 2, "the first frame stays; one slot must be free to replace")
        _require_int("top_k", self.top_k, 1)
        if self.eviction not in ("usage", "oldest"):
            raise ValueError(f"eviction must be 'usage' or 'oldest', got {self.eviction!r}")
        if self.read_kernel not in ("auto", "torch", "triton"):
            raise ValueError(f"read_kernel must be 'auto', 'torch' or 'triton', got {self.read_kernel!r}")

    def top_k_problem(self, latent: tuple[int, int]) -> str | None:
        """Why ``top_k`` cannot work with (h, w) = ``latent`` positions per frame, else None.

        Top-k runs over memory positions: frames held x h x w. A k above what the bank can
        ever hold is a mistake, not a request to clamp (the line names the options).
        """
        positions = self.capacity * latent[0] * latent[1]
        if self.top_k <= positions:
            return None
        return (
            f"--top-k {self.top_k} is more than the memory holds: --memory-frames {self.capacity} x "
            f"{latent[0]}x{latent[1]} positions per frame = {positions}; use --top-k {positions} or less (default 20)"
        )


@dataclass(frozen=True)
class SaveConfig:
    """When a frame is encoded into memory (docs/MEMORY.md).

    ``fixed``: every ``every`` frames. ``adaptive``: the motion-aware rule; diffs are
    percentages of the padded pixel count, rocs are changes of those percentages
    between consecutive frames. Thresholds keep the names of the rule's conditions:

    1. ``msk_roc > mask_roc_high``
    2. ``msk_roc < mask_roc_low and im_roc > image_roc_when_mask_still``
    3. ``K >= many_objects and msk_roc > mask_roc_many_objects``
    4. ``msk_roc > mask_roc_mid and im_roc > image_roc_mid``
    5. ``msk_roc > mask_roc_small and im_roc > image_roc_high``
    """

    mode: SaveMode = "adaptive"
    save_every: int | None = None
    # Frames blocked after a save: a save at t blocks t+1..t+cooldown. The original code's
    # ``max_save_rate = 4`` ("n+1 to force n frames") decrements before it checks, so it
    # blocks 3 frames and t+4 may save (checked against tests/fixtures/seed-save-rule).
    cooldown: int = 3
    image_threshold: float = 4.0
    mask_threshold: float = 0.99
    mask_roc_high: float = 0.3
    mask_roc_low: float = 0.1
    image_roc_when_mask_still: float = 0.5
    many_objects: int = 3
    mask_roc_many_objects: float = 0.1
    mask_roc_mid: float = 0.25
    image_roc_mid: float = 0.25
    mask_roc_small: float = 0.15
    image_roc_high: float = 0.6

    def __post_init__(self) -> None:
        if self.mode not in ("adaptive", "fixed"):
            raise ValueError(f"mode must be 'adaptive' or 'fixed', got {self.mode!r}")
        if self.save_every is not None:
            _require_int("save_every", self.save_every, 1)
        _require_int("cooldown", self.cooldown, 0)
        _require_int("many_objects", self.many_objects, 1)
        integer_fields = {"mode", "save_every", "cooldown", "many_objects"}
        for field in fields(self):
            if field.name not in integer_fields:
                _require_non_negative(field.name, getattr(self, field.name))

    @property
    def every(self) -> int:
        """The periodic interval: ``save_every``, or 5 (fixed) / 10 (adaptive) when unset."""
        if self.save_every is not None:
            return self.save_every
        return 5 if self.mode == "fixed" else 10

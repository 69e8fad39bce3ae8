"""When to encode a frame into memory: the fixed and the motion-aware rule (docs/MEMORY.md).

The whole rule runs on the device in preallocated buffers: the diffs, their rates of
change, the trigger, the frame counter, the periodic rule and the cooldown. A decision is
a 0-d bool device tensor (:meth:`SavePolicy.decide`) that the memory bank takes as it is
(:meth:`eamstcn.runtime.memory.MemoryBank.commit`), so deciding never waits on the device.
:meth:`SavePolicy.should_save` reads it back as a bool, for tests and offline use.
"""

from __future__ import annotations

import math

import torch

from eamstcn.runtime.config import SaveConfig


def _trigger_rows(config: SaveConfig, num_objects: int) -> list[tuple[float, float, float]]:
    """The five conditions as rows ``(msk_roc above, msk_roc below, im_roc above)``.

    A condition holds when all three comparisons of its row do; +-inf disables one.
    """
    c, inf = config, math.inf
    many = c.mask_roc_many_objects if num_objects >= c.many_objects else inf  # inf: never fires
    return [
        (c.mask_roc_high, inf, -inf),  # the mask changes fast
        (-inf, c.mask_roc_low, c.image_roc_when_mask_still),  # the image moves, the mask does not follow
        (many, inf, -inf),  # many objects: smaller mask changes count
        (c.mask_roc_mid, inf, c.image_roc_mid),  # both change moderately
        (c.mask_roc_small, inf, c.image_roc_high),  # a small mask change with a large image change
    ]


class SavePolicy:
    """Decides, frame by frame, whether the session stores the frame in memory.

    Call :meth:`observe_first` at t = 0 (the first frame is always stored by the
    session), then :meth:`decide` (or :meth:`should_save`) for t = 1, 2, ... in order.
    The frame counter lives on the device, so a captured CUDA graph of :meth:`decide`
    replays correctly.

    Every buffer is allocated once, the per-object ones for ``max_objects`` (default
    ``num_objects``) rows, and later streams and object counts reuse them (``copy_``,
    views of the leading rows): a CUDA graph captured over :meth:`decide` keeps reading
    valid memory across :meth:`reset` and changes of K. Only more than ``max_objects``
    objects reallocates (and then graphs captured before must not be replayed).
    """

    def __init__(self, config: SaveConfig, num_objects: int, max_objects: int | None = None) -> None:
        if num_objects < 1:
            raise ValueError(f"num_objects must be >= 1, got {num_objects}")
        self.config = config
        self._num_objects = num_objects
        self._max_objects = max(max_objects or num_objects, num_objects)
        self._buffers_ready = False
        self._counters_ready = False
        self.reset()

    @property
    def num_objects(self) -> int:
        return self._num_objects

    @property
    def decision(self) -> torch.Tensor:
        """The 0-d bool device buffer :meth:`decide` writes (exists after observe_first)."""
        if not self._counters_ready:
            raise RuntimeError("call observe_first before asking for the decision buffer")
        return self._decision

    def reset(self) -> None:
        """Forget the stream; the next call must be :meth:`observe_first`. Buffers are kept."""
        self._observed = False
        self._calls = 0  # decide() calls since observe_first, for should_save's check only

    def set_num_objects(self, num_objects: int) -> None:
        """Objects added mid-stream: their previous mask counts as all zeros."""
        if num_objects < 1:
            raise ValueError(f"num_objects must be >= 1, got {num_objects}")
        old_objects = self._num_objects
        if self._buffers_ready and num_objects > self._prev_probs_rows.shape[0]:
            self._grow_object_rows(num_objects)
        self._max_objects = max(self._max_objects, num_objects)
        self._num_objects = num_objects
        if self._buffers_ready and num_objects != old_objects:
            self._prev_probs_rows[old_objects:num_objects].zero_()  # new objects: empty previous mask
            self._view_object_rows()
        if self._counters_ready:
            self._load_trigger_table()

    def observe_first(self, image: torch.Tensor, probs: torch.Tensor) -> None:
        """Frame 0. image: (3, H, W) normalised, padded; probs: (K, H, W), background excluded."""
        self._check(image, probs)
        self.reset()
        self._observed = True
        if not self._counters_ready or self._frame.device != image.device:
            self._allocate_counters(image.device)
        for counter in (self._frame, self._cooldown, self._num_diffs):
            counter.zero_()
        if self.config.mode == "fixed":
            return
        if (
            not self._buffers_ready
            or self._prev_image.shape != image.shape
            or self._prev_probs_rows.shape[1:] != probs.shape[1:]
            or self._prev_probs_rows.shape[0] < probs.shape[0]
        ):
            self._allocate(image, probs)
        self._view_object_rows()
        self._prev_image.copy_(image)
        self._prev_probs.copy_(probs)

    def decide(self, image: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        """Whether to store the next frame (t = 1, 2, ...), as a 0-d bool device tensor.

        Shapes as :meth:`observe_first`. The result is a buffer overwritten by the next
        call; nothing here reads the device.
        """
        if not self._observed:
            raise RuntimeError("call observe_first with frame 0 before decide")
        self._check(image, probs)
        self._calls += 1
        self._frame.add_(1)
        torch.remainder(self._frame, self.config.every, out=self._remainder)
        if self.config.mode == "fixed":
            return torch.eq(self._remainder, 0, out=self._decision)

        # The series is kept on every frame, whatever the decision.
        config = self.config
        self._percent_changed(image, self._prev_image, self._image_work, self._image_sum, config.image_threshold, self._image_diff)
        self._percent_changed(probs, self._prev_probs, self._mask_work, self._mask_sum, config.mask_threshold, self._mask_diff)
        self._num_diffs.add_(1)
        torch.sub(self._image_diff, self._prev_image_diff, out=self._image_roc).abs_()
        torch.sub(self._mask_diff, self._prev_mask_diff, out=self._mask_roc).abs_()
        self._prev_image_diff.copy_(self._image_diff)
        self._prev_mask_diff.copy_(self._mask_diff)

        # The cooldown is decremented at the top of every frame, then checked (the
        # original's countdown): a save at t sets it so that t+1..t+cooldown are blocked.
        torch.le(self._cooldown, 0, out=self._free)
        self._cooldown.sub_(1).clamp_(min=0)
        # Trigger: rocs exist once two diffs do.
        torch.gt(self._mask_roc, self._mask_above, out=self._holds)
        torch.lt(self._mask_roc, self._mask_below, out=self._compared)
        self._holds.logical_and_(self._compared)
        torch.gt(self._image_roc, self._image_above, out=self._compared)
        self._holds.logical_and_(self._compared)
        torch.any(self._holds, dim=0, out=self._triggered)
        torch.ge(self._num_diffs, 2, out=self._rocs_exist)
        self._triggered.logical_and_(self._rocs_exist)
        decision = torch.eq(self._remainder, 0, out=self._decision)
        decision.logical_or_(self._triggered).logical_and_(self._free)
        torch.where(decision, self._cooldown_after_save, self._cooldown, out=self._cooldown)
        return decision

    def should_save(self, t: int, image: torch.Tensor, probs: torch.Tensor) -> bool:
        """:meth:`decide` for frame ``t`` (>= 1), read back as a bool (a host sync)."""
        if not self._observed:
            raise RuntimeError("call observe_first with frame 0 before should_save")
        if t < 1:
            raise ValueError(f"should_save is for t >= 1, got {t}")
        if t != self._calls + 1:
            raise ValueError(f"frames must come in order: expected t = {self._calls + 1}, got {t}")
        return bool(self.decide(image, probs))

    # ------------------------------------------------------------------ logging
    def stats(self) -> dict[str, float]:
        """The last diffs and rocs as floats, for logs only: this waits on the device."""
        if self.config.mode == "fixed" or not self._observed:
            return {}
        diffs = int(self._num_diffs) if self._counters_ready else 0
        named = {"img_diff": (self._image_diff, 1), "msk_diff": (self._mask_diff, 1), "im_roc": (self._image_roc, 2), "msk_roc": (self._mask_roc, 2)}
        return {name: float(value) for name, (value, needs) in named.items() if diffs >= needs}

    # ------------------------------------------------------------------ internals
    @staticmethod
    def _percent_changed(
        current: torch.Tensor,
        previous: torch.Tensor,
        work: torch.Tensor,
        pixel_sum: torch.Tensor,
        threshold: float,
        out: torch.Tensor,
    ) -> None:
        """out = 100/P * #pixels where sum over axis 0 of |current - previous| > threshold.

        Then previous <- current. current/previous/work: (C, H, W); pixel_sum: (H, W).
        """
        torch.sub(current, previous, out=work).abs_()
        torch.sum(work, dim=0, out=pixel_sum)
        torch.gt(pixel_sum, threshold, out=pixel_sum)  # 1.0 where changed
        torch.sum(pixel_sum, dim=(0, 1), dtype=torch.float32, out=out)  # exact up to 2^24 pixels
        out.mul_(100.0 / pixel_sum.numel())
        previous.copy_(current)

    def _allocate_counters(self, device: torch.device) -> None:
        int64 = {"device": device, "dtype": torch.int64}
        boolean = {"device": device, "dtype": torch.bool}
        self._frame = torch.zeros((), **int64)
        self._remainder = torch.zeros((), **int64)
        self._cooldown = torch.zeros((), **int64)
        self._num_diffs = torch.zeros((), **int64)
        self._cooldown_after_save = torch.tensor(self.config.cooldown, **int64)
        self._decision = torch.zeros((), **boolean)
        self._free = torch.zeros((), **boolean)
        self._triggered = torch.zeros((), **boolean)
        self._rocs_exist = torch.zeros((), **boolean)
        self._holds = torch.empty(5, **boolean)
        self._compared = torch.empty(5, **boolean)
        # The trigger rows (5, 3): rewritten in place when K changes, never reallocated.
        self._trigger_table = torch.empty(5, 3, device=device, dtype=torch.float32)
        self._mask_above, self._mask_below, self._image_above = self._trigger_table.unbind(dim=1)
        stat = {"device": device, "dtype": torch.float32}
        self._image_diff, self._prev_image_diff, self._image_roc = (torch.zeros((), **stat) for _ in range(3))
        self._mask_diff, self._prev_mask_diff, self._mask_roc = (torch.zeros((), **stat) for _ in range(3))
        self._counters_ready = True
        self._buffers_ready = False
        self._load_trigger_table()

    def _allocate(self, image: torch.Tensor, probs: torch.Tensor) -> None:
        self._prev_image = torch.empty_like(image)
        self._image_work = torch.empty_like(image)
        self._image_sum = image.new_empty(image.shape[1:])
        rows = max(self._max_objects, probs.shape[0])
        self._prev_probs_rows = probs.new_zeros((rows, *probs.shape[1:]))
        self._mask_work_rows = probs.new_empty((rows, *probs.shape[1:]))
        self._mask_sum = probs.new_empty(probs.shape[1:])
        self._buffers_ready = True
        self._view_object_rows()

    def _grow_object_rows(self, rows: int) -> None:
        """More objects than allocated for (standalone use; the session never gets here)."""
        old = self._prev_probs_rows
        self._prev_probs_rows = old.new_zeros((rows, *old.shape[1:]))
        self._prev_probs_rows[: old.shape[0]].copy_(old)
        self._mask_work_rows = torch.empty_like(self._prev_probs_rows)

    def _view_object_rows(self) -> None:
        """(K, H, W) views of the leading rows: the same addresses for every K."""
        self._prev_probs = self._prev_probs_rows[: self._num_objects]
        self._mask_work = self._mask_work_rows[: self._num_objects]

    def _load_trigger_table(self) -> None:
        rows = torch.tensor(_trigger_rows(self.config, self._num_objects), dtype=torch.float32)
        self._trigger_table.copy_(rows)  # outside steady frames (K changes, frame 0)

    def _check(self, image: torch.Tensor, probs: torch.Tensor) -> None:
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"image must be (3, H, W), got {tuple(image.shape)}")
        if probs.shape != (self._num_objects, *image.shape[1:]):
            expected = (self._num_objects, *image.shape[1:])
            raise ValueError(f"probs must be (K, H, W) = {expected} to match the image, got {tuple(probs.shape)}")

"""When to encode a frame into memory: the fixed and the motion-aware rule (DESIGN section 3).

The diffs and the trigger stay on the device in preallocated buffers; a call reads one
bool back (one ``.item()``) and only when the answer depends on the trigger: frames in
the cooldown and periodic frames are decided on the host without waiting.
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
    session), then :meth:`should_save` for t = 1, 2, ... in order.
    """

    def __init__(self, config: SaveConfig, num_objects: int) -> None:
        if num_objects < 1:
            raise ValueError(f"num_objects must be >= 1, got {num_objects}")
        self.config = config
        self._num_objects = num_objects
        self._buffers_ready = False
        self.reset()

    @property
    def num_objects(self) -> int:
        return self._num_objects

    def reset(self) -> None:
        """Forget the stream; the next call must be :meth:`observe_first`. Buffers are kept."""
        self._observed = False
        self._num_diffs = 0
        self._cooldown = 0

    def set_num_objects(self, num_objects: int) -> None:
        """Objects added mid-stream: their previous mask counts as all zeros."""
        if num_objects < 1:
            raise ValueError(f"num_objects must be >= 1, got {num_objects}")
        if self._buffers_ready and num_objects != self._num_objects:
            old = self._prev_probs
            self._prev_probs = old.new_zeros((num_objects, *old.shape[1:]))
            kept = min(num_objects, old.shape[0])
            self._prev_probs[:kept].copy_(old[:kept])
            self._mask_work = torch.empty_like(self._prev_probs)
        self._num_objects = num_objects
        if self._buffers_ready:
            self._load_trigger_table()

    def observe_first(self, image: torch.Tensor, probs: torch.Tensor) -> None:
        """Frame 0. image: (3, H, W) normalised, padded; probs: (K, H, W), background excluded."""
        self._check(image, probs)
        self.reset()
        self._observed = True
        if self.config.mode == "fixed":
            return
        if not self._buffers_ready or self._prev_image.shape != image.shape or self._prev_probs.shape != probs.shape:
            self._allocate(image, probs)
        self._prev_image.copy_(image)
        self._prev_probs.copy_(probs)

    def should_save(self, t: int, image: torch.Tensor, probs: torch.Tensor) -> bool:
        """Whether to store frame ``t`` (>= 1). Shapes as :meth:`observe_first`."""
        if not self._observed:
            raise RuntimeError("call observe_first with frame 0 before should_save")
        if t < 1:
            raise ValueError(f"should_save is for t >= 1, got {t}")
        self._check(image, probs)
        every = self.config.every
        if self.config.mode == "fixed":
            return t % every == 0

        # The series is kept on every frame, whatever the decision.
        config = self.config
        self._percent_changed(image, self._prev_image, self._image_work, self._image_sum, config.image_threshold, self._image_diff)
        self._percent_changed(probs, self._prev_probs, self._mask_work, self._mask_sum, config.mask_threshold, self._mask_diff)
        self._num_diffs += 1
        if self._num_diffs >= 2:
            torch.sub(self._image_diff, self._prev_image_diff, out=self._image_roc).abs_()
            torch.sub(self._mask_diff, self._prev_mask_diff, out=self._mask_roc).abs_()
        self._prev_image_diff.copy_(self._image_diff)
        self._prev_mask_diff.copy_(self._mask_diff)

        if self._cooldown > 0:
            self._cooldown -= 1
            return False
        save = t % every == 0 or (self._num_diffs >= 2 and self._trigger())
        if save:
            self._cooldown = self.config.cooldown
        return save

    # ------------------------------------------------------------------ logging
    @property
    def last_image_diff(self) -> torch.Tensor | None:
        """0-d device tensor: % of pixels that changed in the image at the last frame."""
        return self._image_diff if self._num_diffs >= 1 else None

    @property
    def last_mask_diff(self) -> torch.Tensor | None:
        return self._mask_diff if self._num_diffs >= 1 else None

    @property
    def last_image_roc(self) -> torch.Tensor | None:
        return self._image_roc if self._num_diffs >= 2 else None

    @property
    def last_mask_roc(self) -> torch.Tensor | None:
        return self._mask_roc if self._num_diffs >= 2 else None

    def stats(self) -> dict[str, float]:
        """The last diffs and rocs as floats, for logs only: this waits on the device."""
        named = {
            "img_diff": self.last_image_diff,
            "msk_diff": self.last_mask_diff,
            "im_roc": self.last_image_roc,
            "msk_roc": self.last_mask_roc,
        }
        return {name: float(value.item()) for name, value in named.items() if value is not None}

    # ------------------------------------------------------------------ internals
    def _trigger(self) -> bool:
        torch.gt(self._mask_roc, self._mask_above, out=self._holds)
        torch.lt(self._mask_roc, self._mask_below, out=self._compared)
        self._holds.logical_and_(self._compared)
        torch.gt(self._image_roc, self._image_above, out=self._compared)
        self._holds.logical_and_(self._compared)
        torch.any(self._holds, dim=0, out=self._any)
        return bool(self._any.item())  # the one host sync of the frame

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

    def _allocate(self, image: torch.Tensor, probs: torch.Tensor) -> None:
        stat = {"device": image.device, "dtype": torch.float32}
        self._prev_image = torch.empty_like(image)
        self._image_work = torch.empty_like(image)
        self._image_sum = image.new_empty(image.shape[1:])
        self._prev_probs = torch.empty_like(probs)
        self._mask_work = torch.empty_like(probs)
        self._mask_sum = probs.new_empty(probs.shape[1:])
        self._image_diff, self._prev_image_diff, self._image_roc = (torch.zeros((), **stat) for _ in range(3))
        self._mask_diff, self._prev_mask_diff, self._mask_roc = (torch.zeros((), **stat) for _ in range(3))
        self._holds = torch.empty(5, device=image.device, dtype=torch.bool)
        self._compared = torch.empty(5, device=image.device, dtype=torch.bool)
        self._any = torch.empty((), device=image.device, dtype=torch.bool)
        self._buffers_ready = True
        self._load_trigger_table()

    def _load_trigger_table(self) -> None:
        rows = torch.tensor(_trigger_rows(self.config, self._num_objects), dtype=torch.float32)
        rows = rows.to(self._image_diff.device)
        self._mask_above, self._mask_below, self._image_above = rows.unbind(dim=1)

    def _check(self, image: torch.Tensor, probs: torch.Tensor) -> None:
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"image must be (3, H, W), got {tuple(image.shape)}")
        if probs.shape != (self._num_objects, *image.shape[1:]):
            expected = (self._num_objects, *image.shape[1:])
            raise ValueError(f"probs must be (K, H, W) = {expected} to match the image, got {tuple(probs.shape)}")

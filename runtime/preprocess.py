"""uint8 RGB frames -> the normalised, padded image the graphs take, in fixed buffers.

Same arithmetic as :func:`eamstcn.ops.normalize_image` + :func:`eamstcn.ops.pad_to_multiple`
(RGB/255, bilinear resize when the frame is not the engines' size, ImageNet mean/std,
zero padding), written into buffers allocated once per frame size: ``image32`` (float32,
what the save rule compares) and ``image`` (the engines' dtype; the same tensor for fp32).
"""

from __future__ import annotations

import torch

from eamstcn.ops import normalize_image
from eamstcn.runtime.geometry import Geometry


class Preprocessor:
    """Fixed-address image buffers for one :class:`Geometry`.

    ``image32``: (1, 3, Hp, Wp) float32; ``image``: (1, 3, Hp, Wp) in ``dtype``. Their
    padding is zero from allocation on and never written.
    """

    def __init__(self, geometry: Geometry, device: torch.device, dtype: torch.dtype) -> None:
        self.geometry = geometry
        self.device = device
        height, width = geometry.padded
        self.image32 = torch.zeros(1, 3, height, width, device=device)
        self.image = self.image32 if dtype == torch.float32 else torch.zeros(1, 3, height, width, device=device, dtype=dtype)
        rows, cols = geometry.interior()
        self._interior = self.image32[:, :, rows, cols]
        # normalize_image is affine: take it once as x * scale + shift (same function,
        # same constants), kept on the device (its torch.tensor constants would be a
        # host-to-device copy per frame on CUDA).
        shift = normalize_image(torch.zeros(3, 1, 1))
        self._shift = shift.to(device)
        self._scale = (normalize_image(torch.ones(3, 1, 1)) - shift).to(device)
        self._staging: dict[tuple[int, int], torch.Tensor] = {}  # input size -> (H, W, 3) uint8
        self._raw: dict[tuple[int, int], torch.Tensor] = {}  # input size -> (1, 3, H, W) float32
        self._resized = torch.empty(1, 3, *geometry.size, device=device)

    def staging(self, height: int, width: int) -> torch.Tensor:
        """The fixed (H, W, 3) uint8 device buffer for frames of this size (made once)."""
        buffer = self._staging.get((height, width))
        if buffer is None:
            buffer = self._staging[(height, width)] = torch.empty(height, width, 3, device=self.device, dtype=torch.uint8)
        return buffer

    def stage(self, frame: torch.Tensor) -> torch.Tensor:
        """Copy ``frame`` (H, W, 3) uint8, any device, into its staging buffer; return it."""
        buffer = self.staging(int(frame.shape[0]), int(frame.shape[1]))
        buffer.copy_(frame, non_blocking=True)
        return buffer

    def prepare(self, height: int, width: int) -> None:
        """Allocate what :meth:`normalize` needs for frames of this size (non-steady work)."""
        self.staging(height, width)
        if (height, width) != self.geometry.size and (height, width) not in self._raw:
            self._raw[(height, width)] = torch.empty(1, 3, height, width, device=self.device)

    def normalize(self, frame: torch.Tensor) -> None:
        """(H, W, 3) uint8 on the device -> ``image32`` (and ``image``), in place.

        Frames of another size than the engines' are resized bilinearly (no antialias,
        as ``F.interpolate``) from their RGB/255 values; call :meth:`prepare` first.
        """
        chw = frame.permute(2, 0, 1).unsqueeze(0)  # a view: (1, 3, H, W)
        size = (int(frame.shape[0]), int(frame.shape[1]))
        if size == self.geometry.size:
            torch.div(chw, 255.0, out=self._interior)
            torch.addcmul(self._shift, self._interior, self._scale, out=self._interior)
        else:
            raw = self._raw[size]
            torch.div(chw, 255.0, out=raw)
            torch.ops.aten.upsample_bilinear2d.out(raw, list(self.geometry.size), False, None, None, out=self._resized)
            torch.addcmul(self._shift, self._resized, self._scale, out=self._interior)
        if self.image is not self.image32:
            self.image.copy_(self.image32)

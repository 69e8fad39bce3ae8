"""Sizes of one stream as the graphs see it: frame size, padding, padded size, latent grid."""

from __future__ import annotations

from dataclasses import dataclass

from eamstcn.graph_spec import STRIDE
from eamstcn.ops import Pads, pad_amounts


@dataclass(frozen=True)
class Geometry:
    """``size`` (h, w): what frames are resized to; ``pads`` (left, right, top, bottom)
    bring it to ``padded`` (Hp, Wp), multiples of 16; ``latent`` is (Hp/16, Wp/16)."""

    size: tuple[int, int]
    pads: Pads
    padded: tuple[int, int]

    @classmethod
    def for_size(cls, height: int, width: int) -> Geometry:
        pads = pad_amounts(height, width)
        left, right, top, bottom = pads
        return cls((height, width), pads, (height + top + bottom, width + left + right))

    @property
    def latent(self) -> tuple[int, int]:
        return self.padded[0] // STRIDE, self.padded[1] // STRIDE

    @property
    def pixels(self) -> int:
        """P, the padded pixel count."""
        return self.padded[0] * self.padded[1]

    def interior(self) -> tuple[slice, slice]:
        """Row and column slices of the unpadded frame inside the padded one."""
        left, right, top, bottom = self.pads
        height, width = self.padded
        return slice(top, height - bottom), slice(left, width - right)

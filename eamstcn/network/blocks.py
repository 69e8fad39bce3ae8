"""Building blocks of the EamStcn network (STCN structure)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv3x3(in_channels: int, out_channels: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=bias)


class ResBlock(nn.Module):
    """``x + conv3(relu(conv3(relu(x))))``; the shortcut is a 3x3 conv when widths differ."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_channels, out_channels)
        self.conv2 = conv3x3(out_channels, out_channels)
        self.shortcut = conv3x3(in_channels, out_channels) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.conv2(F.relu(self.conv1(F.relu(x))))
        return self.shortcut(x) + residual


class FeatureExpansion(nn.Module):
    """f16 (B, C16, h, w) -> f16x (B, C, h, w): conv-BN-SiLU, then a depthwise-separable residual.

    ``bn_eps`` is 1e-3 in EamStcn (as in its trunks). ``drop_path`` is the stochastic-depth
    rate of the residual branch while training (0.2 in the original recipe; identity in eval).
    """

    def __init__(self, in_channels: int, channels: int, bn_eps: float = 1e-3) -> None:
        super().__init__()
        self.expand = nn.Sequential(
            conv3x3(in_channels, channels, bias=False), nn.BatchNorm2d(channels, eps=bn_eps), nn.SiLU())
        self.depthwise = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False),
            nn.BatchNorm2d(channels, eps=bn_eps),
            nn.SiLU(),
        )
        self.pointwise = nn.Sequential(nn.Conv2d(channels, channels, 1, bias=False), nn.BatchNorm2d(channels, eps=bn_eps))
        self.drop_path = 0.0

    def forward(self, f16: torch.Tensor) -> torch.Tensor:
        x = self.expand(f16)
        residual = self.pointwise(self.depthwise(x))
        if self.training and self.drop_path > 0:
            # Per-sample stochastic depth, scaled so the expectation is unchanged.
            keep = 1.0 - self.drop_path
            mask = residual.new_empty((residual.shape[0], 1, 1, 1)).bernoulli_(keep)
            residual = residual * mask / keep
        return x + residual


class Fusion(nn.Module):
    """Value features (K, C16v, h, w) + expanded key features (1, Cv, h, w) -> memory value (K, Cv, h, w)."""

    def __init__(self, value_channels: int, key_channels: int, out_channels: int) -> None:
        super().__init__()
        self.block1 = ResBlock(value_channels + key_channels, out_channels)
        self.block2 = ResBlock(out_channels, out_channels)

    def forward(self, value_f16: torch.Tensor, f16x: torch.Tensor) -> torch.Tensor:
        num_objects = value_f16.shape[0]
        x = torch.cat([value_f16, f16x.expand(num_objects, -1, -1, -1)], dim=1)
        return self.block2(self.block1(x))


class UpsampleBlock(nn.Module):
    """Upsample x2, add a 3x3-projected skip feature (batch 1, broadcast over K), ResBlock."""

    def __init__(self, skip_channels: int, up_channels: int, out_channels: int) -> None:
        super().__init__()
        self.skip_conv = conv3x3(skip_channels, up_channels)
        self.out_conv = ResBlock(up_channels, out_channels)

    def forward(self, skip: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        return self.out_conv(self.skip_conv(skip) + x)


class Decoder(nn.Module):
    """readout (K, Cv, h, w) + context -> logits (K, 1, 16h, 16w)."""

    def __init__(self, value_dim: int, f8_channels: int, f4_channels: int, mid_channels: tuple[int, int]) -> None:
        super().__init__()
        mid8, mid4 = mid_channels
        self.compress = conv3x3(value_dim, value_dim)
        self.fuse = ResBlock(2 * value_dim, value_dim)
        self.up_8 = UpsampleBlock(f8_channels, value_dim, mid8)
        self.up_4 = UpsampleBlock(f4_channels, mid8, mid4)
        self.predict = conv3x3(mid4, 1)

    def forward(self, readout: torch.Tensor, f16x: torch.Tensor, f8: torch.Tensor, f4: torch.Tensor) -> torch.Tensor:
        num_objects = readout.shape[0]
        context = self.compress(f16x).expand(num_objects, -1, -1, -1)
        x = self.fuse(torch.cat([readout, context], dim=1))
        x = self.up_8(f8, x)
        x = self.up_4(f4, x)
        x = self.predict(F.relu(x))
        return F.interpolate(x, scale_factor=4.0, mode="bilinear", align_corners=False)

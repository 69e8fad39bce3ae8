"""The EamStcn network: one method per exported graph, no state between calls."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from eamstcn.config import ModelConfig
from eamstcn.network.backbone import Trunk, load_trunk_weights
from eamstcn.network.blocks import Decoder, FeatureExpansion, Fusion, conv3x3


class EamStcn(nn.Module):
    """STCN-style memory network with EfficientNetV2 key and value encoders.

    Shapes for a padded frame H x W (multiples of 16), h = H/16, w = W/16, K objects;
    Ck = ``config.key_dim``, Cv = ``config.value_dim``; C8, C4 from the key trunk.
    The memory, top-k readout and aggregation live outside (runtime / training wrapper).
    """

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__()
        self.config = config or ModelConfig()
        cfg = self.config
        self.key_trunk = Trunk(cfg.key_backbone, in_channels=3)
        # RGB + this object's probability + the sum of the other objects' probabilities.
        self.value_trunk = Trunk(cfg.value_backbone, in_channels=5)
        key_channels = self.key_trunk.channels
        self.expansion = FeatureExpansion(key_channels.f16, cfg.value_dim, bn_eps=cfg.expansion_bn_eps)
        self.key_projection = conv3x3(cfg.value_dim, cfg.key_dim)
        # Orthogonal rows (as STCN) give keys of unit-scale spread at initialisation: with
        # the default init the affinity is nearly flat (max softmax weight 0.035 over 60
        # memory cells vs 0.116 orthogonal), the readout is the memory's mean and the keys
        # get almost no gradient for the first hundreds of steps.
        nn.init.orthogonal_(self.key_projection.weight)
        nn.init.zeros_(self.key_projection.bias)
        self.fusion = Fusion(self.value_trunk.channels.f16, cfg.value_dim, cfg.value_dim)
        self.decoder = Decoder(cfg.value_dim, key_channels.f8, key_channels.f4, cfg.decoder_dims)

    def forward(self, *args: object, **kwargs: object) -> None:
        raise RuntimeError("EamStcn has no forward(): call encode_key, encode_value or decode")

    def encode_key(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """image (B, 3, H, W), normalised and padded ->
        key (B, Ck, h, w), f16x (B, Cv, h, w), f8 (B, C8, H/8, W/8), f4 (B, C4, H/4, W/4)."""
        f4, f8, f16 = self.key_trunk(image)
        f16x = self.expansion(f16)
        return self.key_projection(f16x), f16x, f8, f4

    def encode_value(
        self, image: torch.Tensor, masks: torch.Tensor, others: torch.Tensor, f16x: torch.Tensor
    ) -> torch.Tensor:
        """image (1, 3, H, W), masks (K, 1, H, W), others (K, 1, H, W), f16x (1, Cv, h, w)
        -> memory value (K, Cv, h, w). ``others`` is the sum of the other objects' probabilities."""
        num_objects = masks.shape[0]
        x = torch.cat([image.expand(num_objects, -1, -1, -1), masks, others], dim=1)
        _, _, value_f16 = self.value_trunk(x)
        return self.fusion(value_f16, f16x)

    def decode(self, readout: torch.Tensor, f16x: torch.Tensor, f8: torch.Tensor, f4: torch.Tensor) -> torch.Tensor:
        """readout (K, Cv, h, w), f16x (1, Cv, h, w), f8, f4 (batch 1) -> logits (K, 1, H, W)."""
        return self.decoder(readout, f16x, f8, f4)

    def load_backbone_weights(self, key_weights: str | Path | None = None, value_weights: str | Path | None = None) -> None:
        """Initialise either trunk: ``imagenet``, ``none`` or a local weight file (timm,
        safetensors or efficientnet_pytorch layout); see :mod:`eamstcn.network.trunk_init`."""
        if key_weights is not None:
            load_trunk_weights(self.key_trunk, self.config.key_backbone, key_weights)
        if value_weights is not None:
            load_trunk_weights(self.value_trunk, self.config.value_backbone, value_weights)


def others_from_masks(masks: torch.Tensor) -> torch.Tensor:
    """masks (K, 1, H, W) -> (K, 1, H, W): for each object, the sum of the other objects."""
    return masks.sum(dim=0, keepdim=True) - masks

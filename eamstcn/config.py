"""Typed, frozen model configuration, saved into checkpoints and export manifests."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild an EamStcn network.

    ``key_backbone`` and ``value_backbone`` are any timm EfficientNetV2 name
    (``tf_efficientnetv2_b0`` .. ``b3``, ``tf_efficientnetv2_s``, ``efficientnetv2_rw_t``);
    they are chosen independently to trade accuracy for speed.
    ``value_dim`` is the width of memory values, the expanded key features and the first
    decoder stage (512 in EamStcn); smaller values give tiny models for CPU tests.
    """

    key_backbone: str = "tf_efficientnetv2_b1"
    value_backbone: str = "tf_efficientnetv2_b1"
    key_dim: int = 64
    value_dim: int = 512
    # The feature-expansion BatchNorms' eps: 1e-3 as in the original and its trunks.
    # Checkpoints written before this field existed were trained with PyTorch's 1e-5 and
    # load with it (see :data:`LEGACY_DEFAULTS`), so they give the outputs they gave.
    expansion_bn_eps: float = 1e-3

    def __post_init__(self) -> None:
        if self.key_dim <= 0 or self.value_dim <= 0:
            raise ValueError(f"key_dim and value_dim must be positive, got {self.key_dim}, {self.value_dim}")
        if not 0 < self.expansion_bn_eps < 1:
            raise ValueError(f"expansion_bn_eps must lie in (0, 1), got {self.expansion_bn_eps}")
        if self.value_dim % 2:
            raise ValueError(f"value_dim must be even (the decoder halves it), got {self.value_dim}")

    @property
    def decoder_dims(self) -> tuple[int, int]:
        """Widths of the stride-8 and stride-4 decoder stages (256, 256 for value_dim 512)."""
        return self.value_dim // 2, self.value_dim // 2

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, legacy: bool = False) -> "ModelConfig":
        """``legacy``: fields missing from ``data`` take the value they had before they
        existed (:data:`LEGACY_DEFAULTS`), not today's default: for stored configs."""
        if legacy:
            data = {**LEGACY_DEFAULTS, **data}
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**data)


#: What a stored config that lacks a field meant when it was written.
LEGACY_DEFAULTS: dict[str, Any] = {"expansion_bn_eps": 1e-5}

#: A small model for CPU tests and tiny training runs.
TINY = ModelConfig(key_backbone="tf_efficientnetv2_b0", value_backbone="tf_efficientnetv2_b0", key_dim=64, value_dim=128)

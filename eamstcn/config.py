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

    def __post_init__(self) -> None:
        if self.key_dim <= 0 or self.value_dim <= 0:
            raise ValueError(f"key_dim and value_dim must be positive, got {self.key_dim}, {self.value_dim}")
        if self.value_dim % 2:
            raise ValueError(f"value_dim must be even (the decoder halves it), got {self.value_dim}")

    @property
    def decoder_dims(self) -> tuple[int, int]:
        """Widths of the stride-8 and stride-4 decoder stages (256, 256 for value_dim 512)."""
        return self.value_dim // 2, self.value_dim // 2

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**data)


#: A small model for CPU tests and tiny training runs.
TINY = ModelConfig(key_backbone="tf_efficientnetv2_b0", value_backbone="tf_efficientnetv2_b0", key_dim=64, value_dim=128)

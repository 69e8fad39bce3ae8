"""EfficientNetV2 and EfficientNet-Lite trunks from timm, cut after the stride-16 stage.

timm's ``features_only`` still builds the stride-32 stage (6.6 M parameters instead of
1.8 M for B1), so we build the classification model and keep only the stem and the
blocks up to the last stride-16 stage. Channel counts come from ``feature_info``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from eamstcn.network.trunk_init import TrunkInit


class BackboneError(ValueError):
    """A backbone name or weight file that cannot be used."""


@dataclass(frozen=True)
class TrunkChannels:
    f4: int
    f8: int
    f16: int


def _feature_stages(model: nn.Module) -> dict[int, int]:
    """reduction -> index of the block whose output is the last feature at that stride."""
    stages: dict[int, int] = {}
    for info in model.feature_info:
        if info["reduction"] in (4, 8, 16):
            stages[info["reduction"]] = int(info["module"].split(".")[1])
    if set(stages) != {4, 8, 16}:
        raise BackboneError("backbone has no stride-4/8/16 features in its feature_info")
    return stages


class Trunk(nn.Module):
    """Stem + blocks of an EfficientNetV2 or EfficientNet-Lite, returning the stride-4, 8 and 16 features.

    Input (B, in_channels, H, W), H and W multiples of 16; outputs
    f4 (B, C4, H/4, W/4), f8 (B, C8, H/8, W/8), f16 (B, C16, H/16, W/16).
    """

    def __init__(self, name: str, in_channels: int = 3) -> None:
        super().__init__()
        import timm  # lazily: the runtime must import without timm

        try:
            # Symmetric padding (pad_type='') is the EamStcn trunk exactly and exports
            # to ONNX without shape-dependent padding ops.
            model = timm.create_model(name, pretrained=False, pad_type="", num_classes=0)
        except Exception as error:  # timm raises RuntimeError for unknown names
            raise BackboneError(f"cannot build backbone {name!r}: {error}") from None
        if not hasattr(model, "blocks") or not hasattr(model, "feature_info"):
            raise BackboneError(f"backbone {name!r} is not an EfficientNet-style timm model")
        stages = _feature_stages(model)
        channels = {info["reduction"]: info["num_chs"] for info in model.feature_info}
        self.channels = TrunkChannels(f4=channels[4], f8=channels[8], f16=channels[16])
        self._taps = (stages[4], stages[8], stages[16])

        self.conv_stem = model.conv_stem
        if in_channels != 3:
            self.conv_stem = _widen_stem(model.conv_stem, in_channels)
        self.bn1 = model.bn1
        self.blocks = nn.Sequential(*list(model.blocks)[: stages[16] + 1])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.bn1(self.conv_stem(x))
        features = []
        for index, block in enumerate(self.blocks):
            x = block(x)
            if index in self._taps:
                features.append(x)
        f4, f8, f16 = features
        return f4, f8, f16


def _widen_stem(stem: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """A stem conv taking ``in_channels`` inputs; the extra channels start at zero.

    Zero weights on the mask channels keep the pretrained RGB response intact at the
    start of training; the network learns to use the masks from there (as STCN does).
    """
    wide = nn.Conv2d(
        in_channels,
        stem.out_channels,
        kernel_size=stem.kernel_size,
        stride=stem.stride,
        padding=stem.padding,
        bias=stem.bias is not None,
    )
    with torch.no_grad():
        wide.weight.zero_()
        wide.weight[:, :3] = stem.weight
        if stem.bias is not None:
            wide.bias.copy_(stem.bias)
    return wide


def load_trunk_state(trunk: Trunk, state: dict[str, torch.Tensor], label: str) -> list[str]:
    """Load a timm-named ImageNet state dict into ``trunk`` (``label`` names it in errors).

    Keys for the parts we cut (stride-32 stage, head, classifier) are ignored. For a
    trunk with a wider stem (the value encoder) the RGB filters are copied and the extra
    input channels are set to zero, so the pretrained RGB response is intact at the start.
    Every tensor the trunk shares with the file must match in shape. Returns the trunk
    keys that the file lacked.
    """
    state = dict(state)
    own = trunk.state_dict()
    stem_key = "conv_stem.weight"
    widenable = (
        stem_key in state
        and state[stem_key].shape[1] == 3
        and own[stem_key].shape[1] > 3
        and state[stem_key].shape[0] == own[stem_key].shape[0]
        and state[stem_key].shape[2:] == own[stem_key].shape[2:]
    )
    if widenable:
        rgb = state[stem_key]
        widened = torch.zeros_like(own[stem_key])
        widened[:, : rgb.shape[1]] = rgb
        state[stem_key] = widened
    usable = {key: value for key, value in state.items() if key in own}
    mismatched = [key for key, value in usable.items() if value.shape != own[key].shape]
    if mismatched:
        raise BackboneError(f"{label} does not fit this backbone: shape mismatch at {mismatched[:3]}")
    if not usable:
        raise BackboneError(f"{label} holds no weights for this backbone")
    trunk.load_state_dict(usable, strict=False)
    return sorted(set(own) - set(usable))


def load_trunk_weights(trunk: Trunk, backbone: str, spec: str | Path) -> "TrunkInit":
    """Initialise ``trunk`` (built as ``backbone``) from ``spec``: ``imagenet``, ``none`` or
    a file (timm, safetensors or efficientnet_pytorch layout). Returns where the weights
    came from; a trunk the file leaves partly uncovered (other than the counters) is an error."""
    from eamstcn.network.trunk_init import resolve_trunk_init

    state, init = resolve_trunk_init(backbone, spec)
    if state is not None:
        missing = [key for key in load_trunk_state(trunk, state, init.source) if not key.endswith("num_batches_tracked")]
        if missing:
            raise BackboneError(f"{init.source} lacks {len(missing)} tensors of {backbone}, e.g. {missing[:2]}")
    return init

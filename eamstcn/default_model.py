"""The model shipped inside the package: what ``eamstcn-run``, ``eamstcn-export`` and
``eamstcn-eval`` use when given no checkpoint and no engines.

``eamstcn/weights/MODEL.json`` describes it::

    {"format": "eamstcn-bundled-model", "version": 1,
     "name": "eamstcn-lite0", "file": "eamstcn-lite0.pth", "sha256": "...", "bytes": 123,
     "model_config": {...}, "training_command": "...", "numbers": {...}}

The weights file is a checkpoint in our own format (:mod:`eamstcn.checkpoint`) holding
weights only, floating tensors stored as fp16 to halve the download; loading it builds
the fp32 network as usual (``load_state_dict`` copies into fp32 parameters).
``"engines"`` (optional) names a folder beside it holding the same network exported by
``eamstcn-export`` (fp32 ONNX, INT8 ONNX): the runtime-only install (no timm, no onnx)
runs the bundled model from it on ONNX Runtime. :func:`pack_bundled_model` writes the
checkpoint and description from a trained checkpoint; :func:`attach_engines` adds a bundle.

``EAMSTCN_BUNDLED_MODEL`` (a MODEL.json, or a folder holding one) points elsewhere: tests
and custom builds use it. Standard library at import time; torch only in the packer.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eamstcn.fileio import file_sha256

__all__ = [
    "ENV_VAR",
    "BundledModel",
    "BundledModelError",
    "BundledModelMissing",
    "bundled_checkpoint",
    "bundled_model",
    "attach_engines",
    "pack_bundled_model",
]

ENV_VAR = "EAMSTCN_BUNDLED_MODEL"
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DESCRIPTION_NAME = "MODEL.json"
FORMAT_TAG = "eamstcn-bundled-model"
FORMAT_VERSION = 1


class BundledModelError(ValueError):
    """The bundled model is present but unusable (damaged, edited); one line for the user."""


class BundledModelMissing(BundledModelError):
    """This install carries no bundled model; one line for the user."""


@dataclass(frozen=True)
class BundledModel:
    """The shipped model: its name, checkpoint file, sha256 and how it was made."""

    name: str
    path: Path
    sha256: str
    model_config: dict[str, Any] = field(default_factory=dict)
    training_command: str = ""
    numbers: dict[str, Any] = field(default_factory=dict)
    #: (H, W) frames are resized to when this model runs without an explicit --size: the
    #: scale it was trained and scored at (a small model trained on small frames does
    #: poorly on full-size ones). None: each frame's own size.
    frame_size: tuple[int, int] | None = None
    #: The same network exported (a folder with manifest.json), or None when not shipped.
    engines: Path | None = None

    def describe(self, with_size: bool = True) -> str:
        """The one line a command prints when it falls back to this model (``with_size``:
        say the frame size it runs at, when the caller does not choose its own)."""
        size = f", frames resized to {self.frame_size[0]}x{self.frame_size[1]}" if self.frame_size and with_size else ""
        return f"using the bundled model {self.name} (sha256 {self.sha256[:12]}...{size})"


def _description_path() -> Path:
    override = os.environ.get(ENV_VAR)
    if override:
        path = Path(override)
        return path / DESCRIPTION_NAME if path.is_dir() else path
    return WEIGHTS_DIR / DESCRIPTION_NAME


def bundled_model(verify: bool = True, description: Path | None = None) -> BundledModel:
    """Read MODEL.json (the installed one, or ``description``) and check the weights file
    beside it (size and, with ``verify``, its sha256). Raises :class:`BundledModelMissing`
    or :class:`BundledModelError`."""
    description = description or _description_path()
    if not description.is_file():
        raise BundledModelMissing(
            f"the bundled model is missing in this install (no {description}); pass --checkpoint best.pth or --engines DIR"
        )
    try:
        data = json.loads(description.read_text(encoding="utf-8"))
        if data.get("format") != FORMAT_TAG or data.get("version") != FORMAT_VERSION:
            raise ValueError(f"not a {FORMAT_TAG} version {FORMAT_VERSION} description")
        name, file_name, sha256 = str(data["name"]), str(data["file"]), str(data["sha256"]).lower()
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError) as error:
        raise BundledModelError(f"{description} is unreadable ({error}); reinstall eamstcn") from None
    if Path(file_name).name != file_name:
        raise BundledModelError(f"{description}: file {file_name!r} must be a name beside it")
    path = description.parent / file_name
    if not path.is_file():
        raise BundledModelMissing(
            f"the bundled model is missing in this install ({path} is not there); "
            "pass --checkpoint best.pth or --engines DIR"
        )
    expected_bytes = data.get("bytes")
    if expected_bytes is not None and path.stat().st_size != int(expected_bytes):
        raise BundledModelError(f"the bundled model {path} is {path.stat().st_size} bytes, not {expected_bytes}: reinstall eamstcn")
    if verify and file_sha256(path) != sha256:
        raise BundledModelError(f"the bundled model {path} does not match its sha256 in {description}: reinstall eamstcn")
    return BundledModel(
        name=name,
        path=path,
        sha256=sha256,
        model_config=dict(data.get("model_config") or {}),
        training_command=str(data.get("training_command") or ""),
        numbers=dict(data.get("numbers") or {}),
        frame_size=_frame_size(data.get("frame_size"), description),
        engines=_engines(data.get("engines"), description),
    )


def _engines(value: Any, description: Path) -> Path | None:
    """The exported bundle named by MODEL.json, which must be a folder beside it with a
    manifest (its files are checked by the runtime's manifest loader when opened)."""
    if value is None:
        return None
    if not isinstance(value, str) or Path(value).name != value:
        raise BundledModelError(f"{description}: engines {value!r} must be a folder name beside it; reinstall eamstcn")
    folder = description.parent / value
    if not (folder / "manifest.json").is_file():
        raise BundledModelError(f"the bundled engines {folder} are missing or damaged (no manifest.json): reinstall eamstcn")
    return folder


def _frame_size(value: Any, description: Path) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        height, width = (int(v) for v in value)
    except (TypeError, ValueError):
        raise BundledModelError(f"{description}: frame_size must be [H, W], got {value!r}; reinstall eamstcn") from None
    if height < 16 or width < 16:
        raise BundledModelError(f"{description}: frame_size {value!r} is too small; reinstall eamstcn")
    return height, width


def bundled_checkpoint() -> Path:
    """Path of the bundled model's checkpoint, its sha256 verified."""
    return bundled_model().path


def pack_bundled_model(
    checkpoint: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    name: str,
    training_command: str = "",
    numbers: dict[str, Any] | None = None,
    frame_size: tuple[int, int] | None = None,
) -> BundledModel:
    """Write ``out_dir/<name>.pth`` (weights only, floating tensors in fp16) and
    ``out_dir/MODEL.json`` from a trained checkpoint; both written atomically.

    Integer buffers (BatchNorm's ``num_batches_tracked``) keep their dtype.
    """
    import torch

    from eamstcn.checkpoint import atomic_torch_save, load_checkpoint
    from eamstcn.checkpoint import FORMAT_TAG as CHECKPOINT_TAG
    from eamstcn.checkpoint import FORMAT_VERSION as CHECKPOINT_VERSION
    from eamstcn.fileio import atomic_write_bytes

    source = load_checkpoint(checkpoint)
    weights = {key: value.half() if value.is_floating_point() else value for key, value in source.weights.items()}
    out = Path(out_dir)
    file_name = f"{name}.pth"
    atomic_torch_save(
        {
            "format": CHECKPOINT_TAG,
            "version": CHECKPOINT_VERSION,
            "model_config": source.config.to_dict(),
            "weights": weights,
            "training": None,
            "metadata": {"bundled_model": name, "stored_dtype": str(torch.float16), "from": Path(checkpoint).name},
        },
        out / file_name,
    )
    path = out / file_name
    description = {
        "format": FORMAT_TAG,
        "version": FORMAT_VERSION,
        "name": name,
        "file": file_name,
        "sha256": file_sha256(path),
        "bytes": path.stat().st_size,
        "model_config": source.config.to_dict(),
        "training_command": training_command,
        "numbers": numbers or {},
        "frame_size": list(frame_size) if frame_size else None,
    }
    atomic_write_bytes(out / DESCRIPTION_NAME, (json.dumps(description, indent=2) + "\n").encode("utf-8"))
    for written in (path, out / DESCRIPTION_NAME):
        written.chmod(0o644)  # package data: readable by every user of an installed copy
    return BundledModel(name, path, description["sha256"], description["model_config"], training_command, numbers or {},
                        frame_size)


def attach_engines(out_dir: str | os.PathLike[str], bundle: str | os.PathLike[str]) -> BundledModel:
    """Copy an ``eamstcn-export`` bundle of the packed model into ``out_dir/<name>-engines``
    and name it in MODEL.json. The bundle must have been exported from the packed
    checkpoint itself (its manifest's checkpoint sha256), so the engines and the
    checkpoint are one network; frame_size becomes the bundle's."""
    import shutil

    from eamstcn.fileio import atomic_write_bytes

    out = Path(out_dir)
    description_path = out / DESCRIPTION_NAME
    data = json.loads(description_path.read_text(encoding="utf-8"))
    manifest = json.loads((Path(bundle) / "manifest.json").read_text(encoding="utf-8"))
    source = (manifest.get("checkpoint") or {}).get("sha256")
    if source != data["sha256"]:
        raise BundledModelError(f"{bundle} was exported from sha256 {source}, not the packed model {data['sha256']}")
    folder_name = f"{data['name']}-engines"
    target = out / folder_name
    staging = out / f".{folder_name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(bundle, staging)
    for item in staging.iterdir():
        item.chmod(0o644)  # package data: readable by every user of an installed copy
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    data["engines"] = folder_name
    data["frame_size"] = list(manifest["frame_size"]) if manifest.get("frame_size") else data.get("frame_size")
    atomic_write_bytes(description_path, (json.dumps(data, indent=2) + "\n").encode("utf-8"))
    description_path.chmod(0o644)
    return bundled_model(description=description_path)

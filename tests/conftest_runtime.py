"""Shared assets for the runtime tests: a TINY checkpoint and its exported ONNX bundle.

Built once per pytest run (exporting takes ~10-30 s on two cores) under the session's
base temp folder, whichever test module asks first. Import the fixtures into a test
module with ``from tests.conftest_runtime import runtime_assets  # noqa: F401``.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from eamstcn.config import TINY

#: The bundle's frame size (H, W): small, and not 16-aligned in W on purpose (padded to
#: 64 x 64). Clips of other sizes exercise the resize on the way in and out.
FRAME_SIZE = (64, 56)


@dataclass(frozen=True)
class RuntimeAssets:
    checkpoint: Path
    engines: Path


def _build(root: Path) -> RuntimeAssets:
    from eamstcn.checkpoint import save_checkpoint
    from eamstcn.export.bundle import ExportConfig, export_bundle
    from eamstcn.network import EamStcn

    checkpoint = root / "tiny.pth"
    engines = root / "engines"
    if (engines / "manifest.json").is_file() and checkpoint.is_file():
        return RuntimeAssets(checkpoint, engines)
    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = EamStcn(TINY).eval()
    _sharpen(model)
    save_checkpoint(checkpoint, model)
    export_bundle(
        ExportConfig(checkpoint=checkpoint, out=engines, frame_size=FRAME_SIZE, max_objects=4, simplify=False, trt=False)
    )
    return RuntimeAssets(checkpoint, engines)


def _sharpen(model: torch.nn.Module) -> None:
    """Make an untrained network behave like one that segments, without training.

    At initialisation the value encoder's mask channels are zero (so every object gets
    the same value and the same prediction: exact ties) and the logits are tiny. Give
    the mask channels weights and scale the last conv so objects differ clearly."""
    with torch.no_grad():
        stem = model.value_trunk.conv_stem.weight
        stem[:, 3:] = stem[:, :2] * 3.0
        model.decoder.predict.weight.mul_(30.0)


@pytest.fixture(scope="session")
def runtime_assets(tmp_path_factory: pytest.TempPathFactory) -> RuntimeAssets:
    pytest.importorskip("onnx")
    pytest.importorskip("timm")
    return _build(tmp_path_factory.getbasetemp() / "runtime_assets")


def copy_bundle(source: Path, destination: Path) -> Path:
    """A bundle copy whose files can be modified (onnx files copied, not linked)."""
    shutil.copytree(source, destination)
    return destination


def write_mask(path: Path, ids: np.ndarray) -> Path:
    from eamstcn.data.davis_io import write_indexed_png

    write_indexed_png(path, ids.astype(np.uint8))
    return path


def davis_root() -> Path | None:
    """The shared DAVIS-2016 copy (``EAMSTCN_DAVIS`` overrides), or None when absent."""
    candidate = Path(os.environ.get("EAMSTCN_DAVIS") or Path(__file__).resolve().parents[2] / "shared/data/davis2016")
    return candidate if (candidate / "JPEGImages").is_dir() else None


def count_video_frames(path: Path) -> int:
    """Frames OpenCV can decode from the video file at ``path``."""
    import cv2

    capture = cv2.VideoCapture(str(path))
    count = 0
    while capture.read()[0]:
        count += 1
    capture.release()
    return count


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)

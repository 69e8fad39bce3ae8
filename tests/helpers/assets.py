"""The TINY checkpoint and engine bundles the runtime tests share, and small files tests write.

``tests/conftest.py`` builds them once per pytest run (fixtures ``runtime_assets`` and
``int8_bundle``); the functions here are what those fixtures and the tests call.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from eamstcn.config import TINY

#: The bundle's frame size (H, W): small, and not 16-aligned in W on purpose (padded to
#: 64 x 64). Clips of other sizes exercise the resize on the way in and out.
FRAME_SIZE = (64, 56)
#: Frames the INT8 bundle is calibrated on.
CALIBRATION_FRAMES = 8


@dataclass(frozen=True)
class RuntimeAssets:
    checkpoint: Path
    engines: Path


def build_runtime_assets(root: Path) -> RuntimeAssets:
    """A TINY checkpoint and its fp32 ONNX bundle under ``root`` (kept when already there)."""
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


def export_int8_bundle(checkpoint: Path, out: Path, **overrides: object):
    """Export ``checkpoint`` at FRAME_SIZE with INT8 graphs; ``overrides`` replace ExportConfig fields."""
    from eamstcn.export.bundle import ExportConfig, export_bundle

    settings = dict(
        checkpoint=checkpoint, out=out, frame_size=FRAME_SIZE, max_objects=4, simplify=False, trt=False,
        int8=True, calibration_frames=CALIBRATION_FRAMES,
        # An untrained network's masks drift under INT8; 0 keeps every graph in INT8, so
        # the tests run the quantized files (tests of the fp32 fallback set it high).
        int8_min_agreement=0.0,
        int8_min_speedup=0.0,  # a 64x56 TINY graph is too small for INT8 to be faster
    )
    settings.update(overrides)
    return export_bundle(ExportConfig(**settings))  # type: ignore[arg-type]


def copy_bundle(source: Path, destination: Path) -> Path:
    """A bundle copy whose files can be modified (onnx files copied, not linked)."""
    shutil.copytree(source, destination)
    return destination


def write_mask(path: Path, ids: np.ndarray) -> Path:
    from eamstcn.data.davis_io import write_indexed_png

    write_indexed_png(path, ids.astype(np.uint8))
    return path


def davis_root() -> Path | None:
    """The DAVIS-2016 frames (not in the repository): ``EAMSTCN_DAVIS``, else
    ``../shared/data/davis2016`` beside the checkout; None when absent."""
    candidate = Path(os.environ.get("EAMSTCN_DAVIS") or Path(__file__).resolve().parents[3] / "shared/data/davis2016")
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

"""The clip every backend runs on: generated (default) or real footage, with a first mask."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


class ClipError(ValueError):
    """A clip or mask the bench cannot use; one line meant for the user."""


@dataclass(frozen=True)
class Clip:
    """frames (T, H, W, 3) uint8 RGB; first_mask (H, W) uint8 object ids; a name for the header."""

    frames: np.ndarray
    first_mask: np.ndarray
    name: str

    @property
    def num_objects(self) -> int:
        return int(len(np.unique(self.first_mask)) - (1 if (self.first_mask == 0).any() else 0))


def generated_clip(height: int, width: int, frames: int, objects: int, seed: int = 2024) -> Clip:
    """A synthetic clip with panning, occlusion, fast and still stretches (eamstcn.data.synth)."""
    from eamstcn.data.synth import generate_sequence

    sequence = generate_sequence(seed, frames=frames, height=height, width=width, objects=objects)
    return Clip(sequence.frames, sequence.masks[0], f"generated ({objects} objects, seed {seed})")


def footage_clip(video: str | None, frames_dir: Path | None, mask: Path | None, count: int) -> Clip:
    """Up to ``count`` frames of real footage; ``mask`` is the first frame's mask (a centred
    ellipse when none is given: speed does not depend on what is marked). The mask is read
    and checked as ``eamstcn-run`` reads it: a lossy (JPEG) or anti-aliased mask and another
    aspect ratio are refused, the same aspect ratio at another size is resized."""
    import cv2

    from eamstcn.data.davis_io import read_user_mask
    from eamstcn.fileio import non_utf8_path
    from eamstcn.runtime.runner import fit_mask

    images: list[np.ndarray] = []
    if frames_dir is not None:
        from eamstcn.data.davis_io import FRAME_EXTENSIONS, read_frame

        if not frames_dir.is_dir():
            raise ClipError(f"frames folder not found: {frames_dir}")
        paths = sorted(p for p in frames_dir.iterdir() if p.suffix.lower() in FRAME_EXTENSIONS)[:count]
        images = [read_frame(p) for p in paths]
        name = str(frames_dir)
    else:
        assert video is not None
        if non_utf8_path(video) is not None:  # OpenCV crashes on such a name
            raise ClipError(f"--video {non_utf8_path(video)}: the name is not valid UTF-8, which OpenCV cannot open; rename the file")
        if "://" not in video and not Path(video).is_file():
            raise ClipError(f"video not found: {video}")
        capture = cv2.VideoCapture(video)
        while capture.isOpened() and len(images) < count:
            ok, bgr = capture.read()
            if not ok:
                break
            images.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        capture.release()
        name = video
    if len(images) < 2:
        raise ClipError(f"{name}: fewer than 2 readable frames")
    height, width = images[0].shape[:2]
    if mask is None:
        first = np.zeros((height, width), np.uint8)
        cv2.ellipse(first, (width // 2, height // 2), (width // 6, height // 5), 0, 0, 360, 1, -1)
    else:
        first = fit_mask(read_user_mask(mask).ids, (height, width), str(mask), notify=lambda message: None)
    if not first.any():
        raise ClipError(f"mask {mask} marks no object")
    return Clip(np.stack(images), first, name)

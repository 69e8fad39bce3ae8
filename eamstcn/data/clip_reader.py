"""The one clip reader: frames from a folder of images, a video file, a stream URL or a
camera, with the checks and the one-line messages every command shares.

``eamstcn-run``'s sources (:mod:`eamstcn.runtime.sources`) open cameras, streams, videos
and folders here and read them frame by frame on their capture thread; the bench's
footage and INT8 calibration read a whole clip into memory with :func:`read_clip`.
Frames are RGB uint8 (H, W, 3). OpenCV is imported when a video is opened, so a command
that reads none does not need it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from eamstcn.data.davis_io import FRAME_EXTENSIONS, read_frame
from eamstcn.fileio import non_utf8_path

__all__ = [
    "Clip", "ClipError", "ellipse_mask", "frame_files", "frame_folder", "is_stream_url", "open_capture", "read_capture_frame",
    "read_clip", "video_target",
]

#: Builds a ``cv2.VideoCapture``-like object from a camera index, a file or a URL (tests
#: pass a fake).
CaptureFactory = Callable[..., Any]


class ClipError(ValueError):
    """Frames that cannot be read; the message is one line meant for the user."""


@dataclass(frozen=True)
class Clip:
    """A clip to run: consecutive frames (T, H, W, 3) uint8 RGB and the first frame's
    object ids (H, W) uint8 (0 = background), with a name for headers and manifests."""

    name: str
    frames: np.ndarray
    first_mask: np.ndarray

    @property
    def num_objects(self) -> int:
        return int(np.count_nonzero(np.unique(self.first_mask)))


def is_stream_url(text: str) -> bool:
    return "://" in text


def frame_files(folder: Path) -> list[Path]:
    """The image files (.jpg/.jpeg/.png) of ``folder``, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in FRAME_EXTENSIONS)


def frame_folder(folder: Path) -> list[Path]:
    """:func:`frame_files` of a folder that must exist and hold at least one frame."""
    if not folder.is_dir():
        raise ClipError(f"frame folder not found: {folder}")
    paths = frame_files(folder)
    if not paths:
        raise ClipError(f"no .jpg/.png frames in {folder}")
    return paths


def video_target(video: str | Path) -> tuple[str, bool]:
    """(what to open, live) for ``--video``: a stream URL (live) or an existing file.

    A name that is not UTF-8 is refused first: OpenCV's C++ API crashes on one.
    """
    text = str(video)
    shown = non_utf8_path(text)
    if shown is not None:
        raise ClipError(f"--video {shown}: the name is not valid UTF-8, which OpenCV cannot open; rename the file")
    if is_stream_url(text):
        return text, True
    if not Path(text).is_file():
        raise ClipError(f"video not found: {text}")
    return text, False


def _open_failure(target: int | str, live: bool) -> tuple[str, str]:
    """(what did not open, the likely cause) of a capture that did not open."""
    if isinstance(target, int):
        return f"camera {target}", "is it connected and free?"
    if live:
        return f"stream {target}", "wrong address, or the server is not answering"
    return f"video {target}", "not a video OpenCV can read, or damaged: an mp4 cut short loses the index at its end"


def open_capture(target: int | str, live: bool, capture_factory: CaptureFactory | None = None) -> Any:
    """An opened capture of a camera index, a stream URL (``live``) or a video file;
    :class:`ClipError` naming which and the likely cause when it does not open."""
    if capture_factory is None:
        import cv2

        capture_factory = cv2.VideoCapture
    capture = capture_factory(target)
    if not capture.isOpened():
        capture.release()
        subject, cause = _open_failure(target, live)
        raise ClipError(f"{subject} did not open ({cause})")
    return capture


def read_capture_frame(capture: Any) -> np.ndarray | None:
    """The capture's next frame as RGB (H, W, 3) uint8, or None when it gives none."""
    import cv2

    ok, frame = capture.read()
    return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB) if ok else None


def read_clip(video: str | Path | None = None, frames: Path | None = None, count: int | None = None,
              min_frames: int = 2) -> np.ndarray:
    """Up to ``count`` (None: all) consecutive frames (T, H, W, 3) uint8 RGB of a video
    file or URL, or of a frame folder; exactly one of ``video`` and ``frames``.

    Fewer than ``min_frames`` readable frames, or folder images of different sizes, are a
    :class:`ClipError` that starts with the clip's name (``video`` or ``frames`` as given).
    """
    if (video is None) == (frames is None):
        raise ClipError("give a video or a frame folder")
    if frames is not None:
        name = str(frames)
        images = [read_frame(path) for path in frame_folder(frames)[:count]]
        if any(image.shape != images[0].shape for image in images):
            raise ClipError(f"{name}: images must all have the same size (frames of one video)")
    else:
        name = str(video)
        images = _read_video(name, count, min_frames)
    if len(images) < min_frames:
        raise ClipError(f"{name}: fewer than {min_frames} readable frames")
    return np.stack(images)


def _read_video(video: str, count: int | None, min_frames: int) -> list[np.ndarray]:
    target, live = video_target(video)
    try:
        capture = open_capture(target, live)
    except ClipError:  # a clip's one rule: say how many frames it got (none), and why
        cause = _open_failure(target, live)[1]
        raise ClipError(f"{video}: fewer than {min_frames} readable frames (it did not open: {cause})") from None
    images: list[np.ndarray] = []
    try:
        while count is None or len(images) < count:
            frame = read_capture_frame(capture)
            if frame is None:
                break
            images.append(frame)
    finally:
        capture.release()
    return images


def ellipse_mask(height: int, width: int) -> np.ndarray:
    """(H, W) uint8: a centred ellipse of object id 1 (semi-axes H/5 and W/6, about a tenth
    of the frame), the first mask of a clip without annotations, where what is marked does
    not matter (INT8 calibration needs an object to track; the bench's speed does not
    depend on it)."""
    rows, cols = np.ogrid[:height, :width]
    inside = ((rows - height / 2) / (height / 5)) ** 2 + ((cols - width / 2) / (width / 6)) ** 2 <= 1.0
    return inside.astype(np.uint8)

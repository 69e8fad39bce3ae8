"""Outputs of a run under ``--output DIR``, and the optional ``--show`` window.

- ``DIR/masks/%05d.png``: palette PNGs of the user's object ids (each written atomically);
- ``DIR/overlay.mp4``: the frames with the objects' palette colours blended in, written
  to a temporary name and renamed on close, so a finished file is always whole;
- ``DIR/stats.csv``: one row per frame, flushed every ``flush_every`` frames.

:meth:`OutputWriter.close` runs on Ctrl-C and on errors too (use it as a context
manager): everything written so far is kept.
"""

from __future__ import annotations

import csv
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO

import cv2
import numpy as np

from eamstcn.data.davis_io import DAVIS_PALETTE, write_indexed_png
from eamstcn.runtime.timing import STAGES, StepStats

STATS_COLUMNS = ("frame", "total_ms", *(f"{stage}_ms" for stage in STAGES), "saved", "memory_frames", "objects")


def overlay(frame: np.ndarray, labels: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend each object's palette colour into ``frame``.

    frame (H, W, 3) uint8 RGB, labels (H, W) uint8 ids -> (H, W, 3) uint8 RGB.
    """
    colours = DAVIS_PALETTE[labels].astype(np.float32)
    blended = frame.astype(np.float32) * (1.0 - alpha) + colours * alpha
    return np.where((labels > 0)[..., None], blended, frame).astype(np.uint8)


class OutputWriter:
    """Writes masks, the overlay video and per-frame stats; any of them may be switched off."""

    def __init__(
        self,
        output_dir: str | Path,
        fps: float = 25.0,
        masks: bool = True,
        video: bool = True,
        stats: bool = True,
        flush_every: int = 10,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.fps = fps if fps and fps > 0 else 25.0
        self.flush_every = max(1, flush_every)
        self.frames_written = 0
        self._masks_dir = self.output_dir / "masks" if masks else None
        self._want_video = video
        self._video: cv2.VideoWriter | None = None
        self._video_tmp = self.output_dir / ".overlay.partial.mp4"  # cv2 picks the container from the suffix
        self._stats_file: IO[str] | None = None
        self._stats: csv.writer | None = None  # type: ignore[valid-type]
        if stats:
            self._stats_file = open(self.output_dir / "stats.csv", "w", newline="", encoding="utf-8")
            self._stats = csv.writer(self._stats_file)
            self._stats.writerow(STATS_COLUMNS)
        if self._masks_dir is not None:
            self._masks_dir.mkdir(parents=True, exist_ok=True)

    def write(self, index: int, frame: np.ndarray, labels: np.ndarray, stats: StepStats | None = None) -> None:
        """One frame: frame (H, W, 3) uint8 RGB, labels (H, W) uint8 object ids."""
        if self._masks_dir is not None:
            write_indexed_png(self._masks_dir / f"{index:05d}.png", labels)
        if self._want_video:
            self._write_video(overlay(frame, labels))
        if self._stats is not None:
            self._stats.writerow(_stats_row(index, stats))
        self.frames_written += 1
        if self.frames_written % self.flush_every == 0:
            self.flush()

    def _write_video(self, rgb: np.ndarray) -> None:
        height, width = rgb.shape[:2]
        if self._video is None:
            fourcc = cv2.VideoWriter_fourcc(*"mp4v")
            self._video = cv2.VideoWriter(str(self._video_tmp), fourcc, self.fps, (width, height))
            if not self._video.isOpened():
                self._video = None
                self._want_video = False
                print("notice: cannot write overlay.mp4 (no mp4v encoder in this OpenCV); skipping it", file=sys.stderr)
                return
        self._video.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))

    def flush(self) -> None:
        if self._stats_file is not None:
            self._stats_file.flush()

    def close(self) -> None:
        """Finish every output; safe to call twice."""
        if self._stats_file is not None:
            self._stats_file.flush()
            self._stats_file.close()
            self._stats_file = None
            self._stats = None
        if self._video is not None:
            self._video.release()
            self._video = None
            os.replace(self._video_tmp, self.output_dir / "overlay.mp4")

    def __enter__(self) -> OutputWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _stats_row(index: int, stats: StepStats | None) -> list[object]:
    if stats is None:
        return [index, "", *("" for _ in STAGES), "", "", ""]
    stage_ms = [f"{stats.stages[s]:.3f}" if s in stats.stages else "" for s in STAGES]
    return [index, f"{stats.total_ms:.3f}", *stage_ms, int(stats.saved), stats.memory_frames, stats.objects]


def display_available() -> bool:
    """A window can be shown: a desktop session (DISPLAY/WAYLAND_DISPLAY) or Windows/macOS."""
    if sys.platform in ("win32", "darwin"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


class Display:
    """The ``--show`` window; a no-op with one notice where no display (or no GUI OpenCV) exists."""

    def __init__(self, title: str = "eamstcn", notify: Callable[[str], None] | None = None) -> None:
        self.title = title
        self._notify = notify or (lambda message: print(f"notice: {message}", file=sys.stderr))
        self.enabled = display_available()
        if not self.enabled:
            self._notify("--show: no display here (DISPLAY is not set); not showing a window")

    def show(self, frame: np.ndarray, labels: np.ndarray) -> bool:
        """Show one overlaid frame; False when the user pressed q or Esc."""
        if not self.enabled:
            return True
        try:
            cv2.imshow(self.title, cv2.cvtColor(overlay(frame, labels), cv2.COLOR_RGB2BGR))
            key = cv2.waitKey(1) & 0xFF
        except cv2.error:
            self.enabled = False
            self._notify("--show: this OpenCV build has no GUI support (opencv-python-headless); not showing a window")
            return True
        return key not in (ord("q"), 27)

    def close(self) -> None:
        if self.enabled:
            try:
                cv2.destroyWindow(self.title)
            except cv2.error:
                pass

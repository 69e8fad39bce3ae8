"""Outputs of a run under ``--output DIR``, and the optional ``--show`` window.

- ``DIR/masks/%05d.png``: palette PNGs of the user's object ids (each written atomically);
- ``DIR/overlay.mp4``: the frames with the objects' palette colours blended in, written
  to a temporary name and renamed on close, so a finished file is always whole; a frame
  of another size than the first is resized to the first one's (a video has one size);
- ``DIR/stats.csv``: one row per frame, flushed every ``flush_every`` frames.

:meth:`OutputWriter.close` runs on Ctrl-C and on errors too (use it as a context
manager): everything written so far is kept.

:class:`AsyncOutputWriter` moves the encoding off the segmentation loop: each frame's
label map is copied to the host without waiting (into pinned buffers on CUDA) and a
writer thread encodes PNGs and the video from a bounded set of buffers, so the loop
never waits for a PNG or mp4 encoder unless the writer falls a whole queue behind.
"""

from __future__ import annotations

import csv
import os
import queue
import re
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import cv2
import numpy as np
import torch

from eamstcn.data.davis_io import DAVIS_PALETTE, write_indexed_png
from eamstcn.notices import notice
from eamstcn.runtime.lost import LostObjects
from eamstcn.runtime.timing import STAGES, StepStats

#: ``lost``: the ids of the objects whose mask has been empty long enough (space-separated).
#: The mask files a run writes (frame index, five digits or more): the ones it owns.
_MASK_NAME = re.compile(r"\d{5,}\.png")
STATS_COLUMNS = ("frame", "total_ms", *(f"{stage}_ms" for stage in STAGES), "saved", "memory_frames", "objects", "lost")


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
        notify: Callable[[str], None] | None = None,
        lost: LostObjects | None = None,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.lost = lost
        self._notify = notify or notice
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.fps = fps if fps and fps > 0 else 25.0
        self.flush_every = max(1, flush_every)
        self.frames_written = 0
        self._masks_dir = self.output_dir / "masks" if masks else None
        self._want_video = video
        self._video: cv2.VideoWriter | None = None
        self._video_size: tuple[int, int] | None = None  # (width, height) of the first frame
        self._resized_notice = False
        self._video_tmp = self.output_dir / ".overlay.partial.mp4"  # cv2 picks the container from the suffix
        self._stats_file: IO[str] | None = None
        self._stats: csv.writer | None = None  # type: ignore[valid-type]
        if stats:
            self._stats_file = open(self.output_dir / "stats.csv", "w", newline="", encoding="utf-8")
            self._stats = csv.writer(self._stats_file)
            self._stats.writerow(STATS_COLUMNS)
        if self._masks_dir is not None:
            self._masks_dir.mkdir(parents=True, exist_ok=True)
            self._clear_earlier_masks()
        earlier_video = self.output_dir / "overlay.mp4"
        if not video and earlier_video.is_file():
            # It would pass for this run's video: an earlier run's, of other frames.
            earlier_video.unlink()
            self._notify(f"removed an earlier run's {earlier_video}: this run writes no overlay")

    def _clear_earlier_masks(self) -> None:
        """Masks an earlier run left in a reused folder would sit beside this run's shorter
        stats.csv as if they were its own: remove the files this run owns (``NNNNN.png``), say so."""
        assert self._masks_dir is not None
        stale = [path for path in self._masks_dir.glob("*.png") if _MASK_NAME.fullmatch(path.name)]
        for path in stale:
            path.unlink(missing_ok=True)
        if stale:
            self._notify(f"{self.output_dir} held an earlier run's outputs: removed its {len(stale)} masks "
                         "(stats.csv and overlay.mp4 are replaced)")

    def write(self, index: int, frame: np.ndarray, labels: np.ndarray, stats: StepStats | None = None) -> None:
        """One frame: frame (H, W, 3) uint8 RGB, labels (H, W) uint8 object ids."""
        if self._masks_dir is not None:
            write_indexed_png(self._masks_dir / f"{index:05d}.png", labels)
        if self._want_video:
            self._write_video(overlay(frame, labels))
        if self._stats is not None:
            lost = self.lost.update(index, labels) if self.lost is not None else ()
            self._stats.writerow([*_stats_row(index, stats), " ".join(map(str, lost))])
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
                self._notify(f"cannot write overlay.mp4: OpenCV's mp4v encoder refused {width}x{height} frames "
                             "(or this OpenCV has none); skipping it")
                return
            self._video_size = (width, height)
        assert self._video_size is not None
        if (width, height) != self._video_size:
            # OpenCV's writer silently drops frames of another size: resize instead.
            if not self._resized_notice:
                self._resized_notice = True
                target_w, target_h = self._video_size
                self._notify(
                    f"frames of another size than the first ({width}x{height} vs {target_w}x{target_h}) are resized "
                    "to the first one's in overlay.mp4 (the masks keep each frame's own size)"
                )
            rgb = cv2.resize(rgb, self._video_size, interpolation=cv2.INTER_AREA)
        self._video.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))

    def flush(self) -> None:
        if self._stats_file is not None:
            self._stats_file.flush()

    def close(self) -> None:
        """Finish every output; safe to call twice. The video is finished even when the
        stats file's last flush fails (a full disk), and that error is raised after."""
        try:
            if self._stats_file is not None:
                stats_file, self._stats_file, self._stats = self._stats_file, None, None
                try:
                    stats_file.flush()
                finally:
                    stats_file.close()
        finally:
            if self._video is not None:
                self._finish_video()

    def _finish_video(self) -> None:
        """Rename the overlay into place only when it plays back whole. OpenCV's writer
        reports no error: on a full disk its frames or the mp4 index at the end are lost
        silently, and such a file cannot be played, so it is removed, and we say so."""
        assert self._video is not None
        self._video.release()
        self._video = None
        if _mp4_complete(self._video_tmp):
            os.replace(self._video_tmp, self.output_dir / "overlay.mp4")
            return
        self._video_tmp.unlink(missing_ok=True)
        self._notify(
            "overlay.mp4 could not be finished (the disk is full?): removed it rather than leave a file that "
            "cannot be played; the masks and stats.csv are kept"
        )

    def __enter__(self) -> OutputWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _mp4_complete(path: Path) -> bool:
    """``path``'s top-level mp4 boxes tile the file exactly and include the index (moov)
    and the media (mdat): what a short write on a full disk breaks. Reads box headers
    only, and not through OpenCV (whose reader says nothing about why it fails)."""
    try:
        size = path.stat().st_size
        kinds: set[bytes] = set()
        with open(path, "rb") as stream:
            position = 0
            while position < size:
                stream.seek(position)
                header = stream.read(16)
                if len(header) < 8:
                    return False
                length, kind = int.from_bytes(header[:4], "big"), header[4:8]
                if length == 1:  # a 64-bit size follows the type
                    length = int.from_bytes(header[8:16], "big") if len(header) == 16 else 0
                elif length == 0:  # the last box runs to the end of the file
                    length = size - position
                if length < 8:
                    return False
                kinds.add(kind)
                position += length
        return position == size and {b"moov", b"mdat"} <= kinds
    except OSError:
        return False


class OutputError(ValueError):
    """Writing the outputs failed (disk full, folder removed...); one line for the user."""


@dataclass
class _Slot:
    """One host buffer for a label map (pinned on CUDA) and the event its copy records."""

    host: torch.Tensor | None = None
    copied: torch.cuda.Event | None = None


class AsyncOutputWriter:
    """An :class:`OutputWriter` fed from the segmentation loop through a writer thread.

    :meth:`submit` takes the label map where the session made it (on the device) and
    returns at once: the map is copied into one of ``max_pending`` host buffers with a
    non-blocking copy (pinned memory, CUDA only; on the CPU a plain copy, since the
    session may reuse its output buffer), and the thread waits for that copy's event
    before it encodes. When every buffer is in use, ``submit`` waits for the writer: no
    frame is ever dropped. :meth:`close` drains what is queued and closes the files, on
    Ctrl-C and errors too. An error in the thread is re-raised on the loop's thread as
    one :class:`OutputError` line, at the next ``submit`` or at ``close``.
    """

    def __init__(self, writer: OutputWriter, device: torch.device, max_pending: int = 8) -> None:
        self.writer = writer
        self.device = torch.device(device)
        self._pin = self.device.type == "cuda"
        self._free: queue.Queue[_Slot] = queue.Queue()
        for _ in range(max(1, max_pending)):
            self._free.put(_Slot())
        self._work: queue.Queue[tuple[int, np.ndarray, _Slot, StepStats | None] | None] = queue.Queue()
        self._error: tuple[int, BaseException] | None = None
        self._reported = False
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="output-writer", daemon=True)
        self._thread.start()

    @property
    def frames_written(self) -> int:
        return self.writer.frames_written

    def submit(self, index: int, frame: np.ndarray, labels: torch.Tensor, stats: StepStats | None = None) -> None:
        """Queue one frame: frame (H, W, 3) uint8 RGB on the host, labels (H, W) uint8 ids
        on any device. Raises :class:`OutputError` once the writer thread has failed."""
        self._raise_if_failed()
        while True:
            try:
                slot = self._free.get(timeout=0.1)
                break
            except queue.Empty:  # the writer is a whole queue behind (or has failed)
                self._raise_if_failed()
        if slot.host is None or tuple(slot.host.shape) != tuple(labels.shape):
            slot.host = torch.empty(tuple(labels.shape), dtype=torch.uint8, pin_memory=self._pin)
        slot.host.copy_(labels, non_blocking=self._pin)
        if self._pin:
            if slot.copied is None:
                slot.copied = torch.cuda.Event()
            slot.copied.record(torch.cuda.current_stream(self.device))
        self._work.put((index, frame, slot, stats))

    def _run(self) -> None:
        while True:
            item = self._work.get()
            if item is None:
                return
            index, frame, slot, stats = item
            try:
                if self._error is None:
                    if slot.copied is not None:
                        slot.copied.synchronize()
                    assert slot.host is not None
                    self.writer.write(index, frame, slot.host.numpy(), stats)
            except Exception as error:  # surfaced on the loop's thread; later frames are skipped
                self._error = (index, error)
            finally:
                self._free.put(slot)

    def _raise_if_failed(self) -> None:
        if self._error is not None and not self._reported:
            self._reported = True
            index, error = self._error
            reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error) or type(error).__name__
            raise OutputError(f"writing outputs to {self.writer.output_dir} failed at frame {index}: {reason}")

    def close(self) -> None:
        """Write everything queued, close the files; safe to call twice."""
        if not self._closed:
            self._closed = True
            self._work.put(None)
            self._thread.join()
            try:
                self.writer.close()
            except OSError as error:  # the video's final rename, the last flush
                if self._error is None:
                    self._error = (self.writer.frames_written, error)
        self._raise_if_failed()

    def __enter__(self) -> AsyncOutputWriter:
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
        self._notify = notify or notice
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

"""Frame sources: camera, video file, rtsp/http stream, image folder.

Capture runs on a background thread. Live sources (camera, stream) keep only the newest
frame: the segmenter never works through a backlog and latency stays bounded. Files lose
no frame: a bounded queue blocks the reader instead. A stream that stops delivering is
reopened a few times, then ends cleanly with a notice; a file that ends before the frame
count its container announces (truncated, damaged) says at which frame it stopped.

Frames are RGB uint8 numpy arrays (H, W, 3) at this edge; :class:`FrameUploader` turns
each into a torch tensor once (through pinned memory with a non-blocking copy on CUDA).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from eamstcn.data.clip_reader import (
    CaptureFactory, ClipError, frame_folder, open_capture, read_capture_frame, video_target,
)
from eamstcn.data.davis_io import read_frame
from eamstcn.notices import notice


#: A source that cannot be opened or read: the clip reader's error (one line for the
#: user), under the name the runtime's callers catch.
SourceError = ClipError


@dataclass(frozen=True)
class SourceInfo:
    """What is known before the first frame: a name, live or not, fps, frame count."""

    name: str
    live: bool
    fps: float | None = None
    frame_count: int | None = None


class FrameSource:
    """Iterate ``(index, frame)``: index counts delivered frames, frame (H, W, 3) uint8 RGB.

    ``read_next`` runs on the capture thread and returns the next frame, or None at the
    end. Use as a context manager (or call :meth:`close`) to stop the thread.
    """

    def __init__(self, info: SourceInfo, read_next: Callable[[], np.ndarray | None], release: Callable[[], None], queue_size: int = 8) -> None:
        self.info = info
        self.dropped = 0  # live sources: frames replaced before the consumer took them
        self._read_next = read_next
        self._release = release
        self._stop = threading.Event()
        self._done = False
        self._error: BaseException | None = None
        if info.live:
            self._latest: np.ndarray | None = None
            self._condition = threading.Condition()
        else:
            self._queue: queue.Queue[np.ndarray | None] = queue.Queue(maxsize=queue_size)
        self._thread = threading.Thread(target=self._capture, name=f"capture:{info.name}", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ capture thread
    def _capture(self) -> None:
        try:
            while not self._stop.is_set():
                frame = self._read_next()
                if frame is None:
                    break
                self._deliver(frame)
        except BaseException as error:  # surfaced to the consumer, never lost on the thread
            self._error = error
        finally:
            self._deliver(None)

    def _deliver(self, frame: np.ndarray | None) -> None:
        if self.info.live:
            with self._condition:
                if frame is None:
                    self._done = True
                else:
                    if self._latest is not None:
                        self.dropped += 1
                    self._latest = frame
                self._condition.notify()
            return
        while not self._stop.is_set():
            try:
                self._queue.put(frame, timeout=0.1)  # blocks while the consumer is behind
                return
            except queue.Full:
                continue

    # ------------------------------------------------------------------ consumer
    def _next_frame(self) -> np.ndarray | None:
        if self.info.live:
            with self._condition:
                while self._latest is None and not self._done:
                    self._condition.wait(timeout=0.1)
                frame, self._latest = self._latest, None
                return frame
        while True:
            try:
                return self._queue.get(timeout=0.1)
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    return None

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        index = 0
        while True:
            frame = self._next_frame()
            if frame is None:
                break
            yield index, frame
            index += 1
        if self._error is not None:
            error, self._error = self._error, None
            if isinstance(error, SourceError):
                raise error
            raise SourceError(f"reading {self.info.name} failed: {error}") from None

    def close(self) -> None:
        self._stop.set()
        if self.info.live:
            with self._condition:
                self._condition.notify_all()
        else:  # unblock a capture thread waiting on a full queue
            while not self._queue.empty():
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    break
        self._thread.join(timeout=2.0)
        self._release()

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------- opening


def open_source(
    camera: int | None = None,
    video: str | Path | None = None,
    frames: str | Path | None = None,
    *,
    retries: int = 3,
    retry_wait: float = 0.5,
    notify: Callable[[str], None] = notice,
    capture_factory: CaptureFactory | None = None,
) -> FrameSource:
    """Open exactly one of a camera index, a video file or URL, or an image folder.

    ``retries``/``retry_wait``: for live sources, how often and after how long a source
    that stops delivering is reopened before the stream ends. ``capture_factory`` builds
    the ``cv2.VideoCapture``-like object (default ``cv2.VideoCapture``; tests pass a fake).
    Raises :class:`SourceError` when the source cannot be opened (the checks and messages
    are :mod:`eamstcn.data.clip_reader`'s, shared with the bench and INT8 calibration).
    """
    capture_factory = capture_factory or cv2.VideoCapture
    given = [name for name, value in (("camera", camera), ("video", video), ("frames", frames)) if value is not None]
    if len(given) != 1:
        raise SourceError("give exactly one source: --camera N, --video PATH_OR_URL or --frames DIR")
    if frames is not None:
        return _folder_source(Path(frames))
    if camera is not None:
        if isinstance(camera, bool) or camera < 0:  # OpenCV segfaults on a negative index
            raise SourceError(f"--camera takes a camera index: 0, 1, ... (got {camera})")
        return _capture_source(camera, f"camera {camera}", True, retries, retry_wait, notify, capture_factory)
    assert video is not None
    target, live = video_target(video)
    if live:
        return _capture_source(target, target, True, retries, retry_wait, notify, capture_factory)
    return _capture_source(target, Path(target).name, False, 0, 0.0, notify, capture_factory)


def _folder_source(folder: Path) -> FrameSource:
    paths = frame_folder(folder)
    iterator = iter(paths)

    def read_next() -> np.ndarray | None:
        path = next(iterator, None)
        return None if path is None else read_frame(path)

    return FrameSource(SourceInfo(folder.name, live=False, fps=None, frame_count=len(paths)), read_next, lambda: None)


def _capture_source(
    target: int | str,
    name: str,
    live: bool,
    retries: int,
    retry_wait: float,
    notify: Callable[[str], None],
    capture_factory: CaptureFactory,
) -> FrameSource:
    capture = open_capture(target, live, capture_factory)
    fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0) or None
    count = max(0, int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)) or None
    holder = {"capture": capture}
    delivered = [0]

    def read_next() -> np.ndarray | None:
        frame = read_capture_frame(holder["capture"])
        attempt = 0
        while frame is None and live and attempt < retries:
            attempt += 1
            notify(f"{name} stopped delivering frames; reconnecting ({attempt}/{retries})")
            time.sleep(retry_wait)
            holder["capture"].release()
            holder["capture"] = capture_factory(target)
            if holder["capture"].isOpened():
                frame = read_capture_frame(holder["capture"])
        if frame is None:
            if live:
                notify(f"{name} ended: no frames after {retries} reconnection attempts")
            elif count is not None and delivered[0] < count:
                notify(
                    f"{name} ended early at frame {delivered[0]}: {delivered[0]} of the {count} frames its container "
                    "announces could be read (the file is truncated or damaged); the run ends there"
                )
            return None
        delivered[0] += 1
        return frame

    return FrameSource(SourceInfo(name, live=live, fps=fps, frame_count=None if live else count), read_next, lambda: holder["capture"].release())


# ---------------------------------------------------------------------------- upload


class FrameUploader:
    """numpy RGB frames (H, W, 3) uint8 -> torch tensors on ``device``, once per frame.

    On CUDA each frame is copied into a reused pinned buffer and sent with a
    non-blocking copy; an event guards the buffer so the next frame does not overwrite
    it before that copy has finished. On the CPU ``torch.from_numpy`` shares memory.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._pinned: torch.Tensor | None = None
        self._copied: torch.cuda.Event | None = None

    def __call__(self, frame: np.ndarray) -> torch.Tensor:
        host = torch.from_numpy(np.ascontiguousarray(frame))
        if self.device.type != "cuda":
            return host
        if self._pinned is None or self._pinned.shape != host.shape:
            self._pinned = torch.empty(host.shape, dtype=torch.uint8, pin_memory=True)
            self._copied = torch.cuda.Event()
        elif self._copied is not None:
            self._copied.synchronize()  # the previous frame's copy, long done in practice
        self._pinned.copy_(host)
        tensor = self._pinned.to(self.device, non_blocking=True)
        assert self._copied is not None
        self._copied.record(torch.cuda.current_stream(self.device))
        return tensor

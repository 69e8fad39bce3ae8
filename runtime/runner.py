"""Run one stream end to end: source -> session -> outputs. The library behind ``eamstcn-run``.

User mistakes raise ValueError subclasses with one-line messages (:data:`USER_ERRORS`);
outputs are closed on every exit path (Ctrl-C included), so what was written is kept.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from eamstcn.data.davis_io import MaskError, read_mask
from eamstcn.runtime.config import MemoryConfig, SaveConfig
from eamstcn.runtime.engines.base import EngineError
from eamstcn.runtime.engines.factory import open_engines
from eamstcn.runtime.manifest import ManifestError
from eamstcn.runtime.session import Session, SessionError
from eamstcn.runtime.sinks import Display, OutputWriter
from eamstcn.runtime.sources import FrameUploader, SourceError, open_source

DEFAULT_ENGINES = Path("engines")
#: Relative difference of H/W ratios up to which a mask counts as the frames' aspect ratio.
ASPECT_TOLERANCE = 0.01


class RunError(ValueError):
    """A run option that cannot be used; one line meant for the user."""


USER_ERRORS: tuple[type[Exception], ...] = (RunError, SourceError, ManifestError, EngineError, MaskError, SessionError)


@dataclass(frozen=True)
class RunOptions:
    """Everything ``eamstcn-run`` parses; exactly one of camera / video / frames."""

    mask: Path
    camera: int | None = None
    video: str | None = None
    frames: Path | None = None
    engines: Path | None = None
    checkpoint: Path | None = None
    backend: str = "auto"
    precision: str = "auto"
    device: str | None = None
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    save: SaveConfig = field(default_factory=SaveConfig)
    add_masks: tuple[tuple[int, Path], ...] = ()
    output: Path | None = None
    show: bool = False
    max_frames: int | None = None
    progress: bool = True


@dataclass
class RunSummary:
    frames: int = 0
    seconds: float = 0.0
    stored_frames: int = 0
    objects: int = 0
    backend: str = ""
    interrupted: bool = False
    dropped: int = 0

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def lines(self) -> list[str]:
        lines = [
            f"frames: {self.frames}  mean FPS: {self.fps:.1f}  frames stored: {self.stored_frames}  objects: {self.objects}",
            f"backend: {self.backend}",
        ]
        if self.dropped:
            lines.append(f"live source: {self.dropped} frames dropped to stay current")
        if self.interrupted:
            lines.append("interrupted: outputs written so far are kept")
        return lines


def parse_add_mask(text: str) -> tuple[int, Path]:
    """``FRAME:PATH`` -> (frame index, path)."""
    frame, sep, path = text.partition(":")
    if not sep or not frame.strip().isdigit() or not path:
        raise RunError(f"--add-mask takes FRAME:PATH (e.g. 40:second_object.png), got {text!r}")
    return int(frame), Path(path)


def fit_mask(ids: np.ndarray, frame_shape: tuple[int, int], source: str, notify: Callable[[str], None]) -> np.ndarray:
    """A mask (h, w) for frames (H, W): same size as is; same aspect ratio resized (nearest)."""
    height, width = frame_shape
    mask_h, mask_w = ids.shape
    if (mask_h, mask_w) == (height, width):
        return ids
    ratio, mask_ratio = height / width, mask_h / mask_w
    if abs(mask_ratio - ratio) / ratio > ASPECT_TOLERANCE:
        raise RunError(f"mask {source} is {mask_w}x{mask_h} but the frames are {width}x{height}: another aspect ratio")
    notify(f"mask {source} is {mask_w}x{mask_h}, frames are {width}x{height}: resizing the mask (nearest)")
    return cv2.resize(ids, (width, height), interpolation=cv2.INTER_NEAREST)


def _check_engine_aspect(shape: tuple[int, int], engine_size: tuple[int, int] | None, notify: Callable[[str], None]) -> None:
    """Frames are resized to the bundle's frame size; say so when that stretches them."""
    if engine_size is None:
        return
    (height, width), (engine_h, engine_w) = shape, engine_size
    if abs(height / width - engine_h / engine_w) / (engine_h / engine_w) > ASPECT_TOLERANCE:
        notify(
            f"frames are {width}x{height} but the engines were exported for {engine_w}x{engine_h}: "
            "frames are stretched to fit (export with --size matching the source for best results)"
        )


def _read_mask(path: Path) -> np.ndarray:
    ids = read_mask(path)
    if not ids.any():
        raise RunError(f"mask {path} has no object (every pixel is background)")
    return ids


def _with_last_flag(
    frames: Iterator[tuple[int, np.ndarray]], limit: int | None, lookahead: bool = True
) -> Iterator[tuple[int, np.ndarray, bool]]:
    """(index, frame, is_last): one frame of look-ahead tells which frame is the last.

    Live sources get no look-ahead (it would hold each frame back by one frame period
    and let it go stale); their frames are never "last" except at ``limit``.
    """
    if not lookahead:
        for index, frame in frames:
            at_limit = limit is not None and index + 1 >= limit
            yield index, frame, at_limit
            if at_limit:
                return
        return
    current = next(frames, None)
    while current is not None:
        index, frame = current
        at_limit = limit is not None and index + 1 >= limit
        following = None if at_limit else next(frames, None)
        yield index, frame, following is None
        if at_limit:
            return
        current = following


def _notice(message: str) -> None:
    print(f"notice: {message}", file=sys.stderr)


def run(options: RunOptions, notify: Callable[[str], None] = _notice) -> RunSummary:
    """Segment the source's frames; return what happened. Raises ``USER_ERRORS`` for bad input."""
    sources = [value for value in (options.camera, options.video, options.frames) if value is not None]
    if len(sources) != 1:
        raise RunError("give exactly one source: --camera N, --video PATH_OR_URL or --frames DIR")
    first_mask = _read_mask(options.mask)
    extra_masks: dict[int, tuple[Path, np.ndarray]] = {}
    for frame_index, path in options.add_masks:
        if frame_index < 1:
            raise RunError(f"--add-mask frame must be >= 1 (frame 0 uses --mask), got {frame_index}")
        extra_masks[frame_index] = (path, _read_mask(path))
    if options.max_frames is not None and options.max_frames < 1:
        raise RunError("--max-frames must be >= 1")

    engines_dir = options.engines
    if engines_dir is None and options.checkpoint is None:
        engines_dir = DEFAULT_ENGINES
    engines = open_engines(engines_dir, options.checkpoint, options.backend, options.device, options.precision)
    summary = RunSummary(backend=engines.describe())
    source = None
    writer = None
    display = None
    try:
        source = open_source(options.camera, options.video, options.frames, notify=notify)
        session = Session(engines, options.memory, options.save, timing=options.output is not None)
        upload = FrameUploader(engines.device)
        if options.output is not None:
            writer = OutputWriter(options.output, fps=source.info.fps or 25.0)
        if options.show:
            display = Display(notify=notify)
        total = source.info.frame_count
        if options.max_frames is not None:
            total = min(total or options.max_frames, options.max_frames)
        progress = _progress(total, options.progress)
        started = time.perf_counter()
        try:
            for index, frame, is_last in _with_last_flag(iter(source), options.max_frames, lookahead=not source.info.live):
                shape = (frame.shape[0], frame.shape[1])
                mask = None
                if index == 0:
                    mask = fit_mask(first_mask, shape, str(options.mask), notify)
                    _check_engine_aspect(shape, engines.manifest.frame_size, notify)
                elif index in extra_masks:
                    path, ids = extra_masks.pop(index)
                    mask = fit_mask(ids, shape, str(path), notify)
                tensor = upload(frame)
                probs = session.step(tensor, None if mask is None else torch.from_numpy(mask), is_last=is_last)
                labels = session.labels(probs).cpu().numpy()  # the frame's one device -> host copy
                summary.frames += 1
                if writer is not None:
                    writer.write(index, frame, labels, session.last_stats)
                if display is not None and not display.show(frame, labels):
                    break
                progress(summary.frames, time.perf_counter() - started)
        except KeyboardInterrupt:
            summary.interrupted = True
        finally:
            summary.seconds = time.perf_counter() - started
            summary.stored_frames = session.stored_frames
            summary.objects = session.num_objects
            summary.dropped = source.dropped
            progress(None, 0.0)
        for frame_index in sorted(extra_masks):
            notify(f"--add-mask for frame {frame_index} was not used: the source ended before it")
    finally:
        if writer is not None:
            writer.close()
        if display is not None:
            display.close()
        if source is not None:
            source.close()
        engines.close()
    return summary


def _progress(total: int | None, enabled: bool) -> Callable[[int | None, float], None]:
    """A live FPS line on an interactive terminal; calling it with None closes it."""
    from tqdm import tqdm

    bar = tqdm(total=total, unit="frame", dynamic_ncols=True, leave=False, disable=None if enabled else True)

    def update(frames: int | None, seconds: float) -> None:
        if frames is None:
            bar.close()
            return
        bar.update(1)
        if seconds > 0:
            bar.set_postfix_str(f"{frames / seconds:.1f} FPS", refresh=False)

    return update

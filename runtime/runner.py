"""Run one stream end to end: source -> session -> outputs. The library behind ``eamstcn-run``.

User mistakes raise ValueError subclasses with one-line messages (:data:`USER_ERRORS`).
Everything that can be checked before the first frame is (masks, option values, the
model, the source and its first frame, object ids, top-k against the memory), and the
output folder is created only once the first frame has been segmented, so a refused run
leaves nothing behind. Outputs are written by a writer thread and closed on every exit
path (Ctrl-C included), so what was segmented is kept.
"""

from __future__ import annotations

import itertools
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from eamstcn.data.davis_io import MaskError, MaskFile, read_user_mask
from eamstcn.default_model import BundledModelError, BundledModelMissing, bundled_model
from eamstcn.fileio import non_utf8_path, output_problem
from eamstcn.graph_spec import STRIDE
from eamstcn.ops import padded_size
from eamstcn.runtime.config import MemoryConfig, SaveConfig
from eamstcn.runtime.engines.base import EngineError, EngineSet
from eamstcn.runtime.engines.factory import open_engines
from eamstcn.runtime.lost import DEFAULT_LOST_AFTER, LostObjects
from eamstcn.runtime.marking import AddBox, box_ids, first_ids, plan_box_ids, write_first_mask
from eamstcn.runtime.manifest import EXPORT_HINT, ManifestError
from eamstcn.runtime.prompts import Box, Point, PromptError
from eamstcn.runtime.window import Window, WindowError
from eamstcn.runtime.session import DEFAULT_MAX_OBJECTS, Session, SessionError
from eamstcn.runtime.sinks import AsyncOutputWriter, Display, OutputError, OutputWriter, overlay
from eamstcn.runtime.sources import FrameUploader, SourceError, open_source

DEFAULT_ENGINES = Path("engines")
#: Relative difference of H/W ratios up to which a mask counts as the frames' aspect ratio.
ASPECT_TOLERANCE = 0.01
#: Frames smaller than this (either side) are refused: nothing to segment at 1x1.
MIN_FRAME_SIDE = 16
#: Seconds between two plain progress lines when stderr is not a terminal.
PROGRESS_EVERY_S = 10.0


class RunError(ValueError):
    """A run option that cannot be used; one line meant for the user."""


USER_ERRORS: tuple[type[Exception], ...] = (
    RunError, SourceError, ManifestError, EngineError, MaskError, SessionError, OutputError, BundledModelError,
    PromptError, WindowError,
)


@dataclass(frozen=True)
class RunOptions:
    """Everything ``eamstcn-run`` parses; exactly one of camera / video / frames; the first
    objects from ``mask``, or ``boxes``/``points`` on the first frame, or (``show`` and
    neither) boxes drawn in the window."""

    mask: Path | None = None
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
    boxes: tuple[Box, ...] = ()
    points: tuple[Point, ...] = ()
    add_boxes: tuple[AddBox, ...] = ()
    #: Frames an object's mask may stay empty before it is reported lost (needs ``output``).
    lost_after: int = DEFAULT_LOST_AFTER
    output: Path | None = None
    show: bool = False
    max_frames: int | None = None
    #: (H, W) frames are resized to on the PyTorch path (a bundle fixes its own size);
    #: None: the bundled model's size when it is the model, else each frame's own.
    frame_size: tuple[int, int] | None = None
    progress: bool = True
    progress_every_s: float = PROGRESS_EVERY_S
    #: Frames the writer thread may be behind before the loop waits for it.
    writer_queue: int = 8


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
    _check_aspect(ids.shape, frame_shape, source)
    notify(f"mask {source} is {mask_w}x{mask_h}, frames are {width}x{height}: resizing the mask (nearest)")
    return cv2.resize(ids, (width, height), interpolation=cv2.INTER_NEAREST)


def _check_aspect(mask_shape: tuple[int, ...], frame_shape: tuple[int, int], source: str) -> None:
    (mask_h, mask_w), (height, width) = mask_shape, frame_shape
    ratio, mask_ratio = height / width, mask_h / mask_w
    if abs(mask_ratio - ratio) / ratio > ASPECT_TOLERANCE:
        raise RunError(f"mask {source} is {mask_w}x{mask_h} but the frames are {width}x{height}: another aspect ratio")


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


def _read_mask(path: Path, option: str) -> MaskFile:
    mask = read_user_mask(path)
    if not mask.ids.any():
        raise RunError(f"{option} {path} has no object (every pixel is background)")
    return mask


# --------------------------------------------------------------------------- object ids


@dataclass(frozen=True)
class AddedMask:
    """An ``--add-mask`` with the ids it will carry in the session (H, W) uint8."""

    frame: int
    path: Path
    ids: np.ndarray
    new_ids: tuple[int, ...]
    corrected_ids: tuple[int, ...]
    explicit: bool

    def describe(self) -> str:
        """One line: which ids this mask adds or corrects, and why."""
        def ids(values: tuple[int, ...]) -> str:
            return f"id{'s' if len(values) > 1 else ''} {', '.join(map(str, values))}"

        where = f"--add-mask {self.frame}:{self.path}"
        if not self.explicit:
            count = len(self.new_ids)
            return (
                f"{where}: a grey-level mask ({count} object{'s' if count > 1 else ''}) adds new object {ids(self.new_ids)} "
                "(to correct a tracked object, draw its id in a palette PNG)"
            )
        parts = [f"adds new object {ids(self.new_ids)}"] if self.new_ids else []
        parts += [f"corrects {ids(self.corrected_ids)}"] if self.corrected_ids else []
        return f"{where}: palette ids; {' and '.join(parts)}"


def plan_object_ids(first: MaskFile, added: list[tuple[int, Path, MaskFile]]) -> tuple[tuple[int, ...], list[AddedMask]]:
    """The ids every mask will carry, in frame order; returns (all ids, the added masks).

    The first mask's ids are as read. A later mask whose file names its ids (palette PNG,
    DAVIS palette colours) adds the ids not tracked yet and corrects those that are. A
    grey-level, binary or arbitrary-colour mask cannot name a tracked object: its objects
    (ranked 1..n within the file) become new ids after the largest id tracked so far.
    """
    tracked = sorted(int(v) for v in np.unique(first.ids) if v)
    planned: list[AddedMask] = []
    for frame, path, mask in sorted(added, key=lambda item: item[0]):
        present = sorted(int(v) for v in np.unique(mask.ids) if v)
        if mask.explicit_ids:
            ids = mask.ids
            new = [v for v in present if v not in tracked]
            corrected = [v for v in present if v in tracked]
        else:
            start = max(tracked)
            if start + len(present) > 255:
                raise RunError(f"--add-mask {frame}:{path} would need object ids above 255")
            table = np.zeros(256, dtype=np.uint8)
            for rank, value in enumerate(present, start=1):
                table[value] = start + rank
            ids = table[mask.ids]
            new, corrected = [start + rank for rank in range(1, len(present) + 1)], []
        tracked = sorted(set(tracked) | set(new))
        planned.append(AddedMask(frame, path, ids, tuple(new), tuple(corrected), mask.explicit_ids))
    return tuple(tracked), planned


# --------------------------------------------------------------------------- model


def resolve_model(
    engines: Path | None, checkpoint: Path | None, notify: Callable[[str], None]
) -> tuple[Path | None, Path | None, tuple[int, int] | None]:
    """(engines folder, checkpoint, frame size) to open: as given; else ``./engines`` when
    it exists; else the bundled model at its own frame size (saying so in one line): its
    exported engines and its checkpoint, so that ``auto`` picks ONNX Runtime where it is
    installed and the PyTorch path elsewhere."""
    if engines is not None or checkpoint is not None:
        return engines, checkpoint, None
    if DEFAULT_ENGINES.exists():
        return DEFAULT_ENGINES, None, None
    try:
        model = bundled_model()
    except BundledModelMissing:
        raise RunError(
            f"no model: ./{DEFAULT_ENGINES} does not exist and the bundled model is missing in this install; "
            f"pass --checkpoint best.pth or --engines DIR (build one with `{EXPORT_HINT}`)"
        ) from None
    notify(model.describe())
    return model.engines, model.path, model.frame_size


def _check_top_k(memory: MemoryConfig, padded: tuple[int, int]) -> None:
    """Top-k runs over memory positions: frames held x (H/16 x W/16) positions per frame.
    A k above what the bank can ever hold is a mistake, not a request to clamp."""
    height, width = padded[0] // STRIDE, padded[1] // STRIDE
    positions = memory.capacity * height * width
    if memory.top_k > positions:
        raise RunError(
            f"--top-k {memory.top_k} is more than the memory holds: --memory-frames {memory.capacity} x "
            f"{height}x{width} positions per frame = {positions}; use --top-k {positions} or less (default 20)"
        )


def _check_output(output: Path) -> None:
    """The output must be a folder, or a path where one can be made."""
    shown = non_utf8_path(output)
    if shown is not None:  # OpenCV's video writer would crash on it after the first mask was written
        raise RunError(f"--output {shown}: the name is not valid UTF-8, which OpenCV cannot write to; choose another name")
    if os.path.lexists(output) and not os.path.isdir(output):  # os.path: no OSError on a name too long
        raise RunError(f"--output {output} is a file: give a folder (it will hold masks/, overlay.mp4 and stats.csv)")
    problem = output_problem(output)  # a name too long, a file on the way, a parent not writable
    if problem is not None:
        raise RunError(f"--output {output}: {problem}")


# --------------------------------------------------------------------------- the run


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


def _validate_options(options: RunOptions) -> None:
    sources = [value for value in (options.camera, options.video, options.frames) if value is not None]
    if len(sources) != 1:
        raise RunError("give exactly one source: --camera N, --video PATH_OR_URL or --frames DIR")
    if options.max_frames is not None and options.max_frames < 1:
        raise RunError("--max-frames must be >= 1")
    for frame_index, _ in options.add_masks:
        if frame_index < 1:
            raise RunError(f"--add-mask frame must be >= 1 (frame 0 uses --mask), got {frame_index}")
    if len({frame for frame, _ in options.add_masks}) != len(options.add_masks):
        raise RunError("--add-mask: give each frame once (one mask file may hold several objects)")
    if options.mask is not None and (options.boxes or options.points):
        raise RunError("give the first objects one way: --mask, or --box/--point")
    if options.mask is None and not (options.boxes or options.points or options.show):
        raise RunError("--mask, --box or --point is required (or --show to draw boxes in a window; try --demo)")
    box_frames = [add.frame for add in options.add_boxes]
    if min(box_frames, default=1) < 1:
        raise RunError("--add-box frame must be >= 1 (frame 0 uses --box)")
    if len(set(box_frames)) != len(box_frames) or set(box_frames) & {frame for frame, _ in options.add_masks}:
        raise RunError("--add-box: give each frame once, and not a frame that has an --add-mask")
    if options.max_frames is not None:  # else such a mask was "not used: the source ended before it"
        late = sorted(frame for frame in [*(f for f, _ in options.add_masks), *box_frames] if frame >= options.max_frames)
        if late:
            raise RunError(f"--add-mask/--add-box at frame {late[0]} is never reached: --max-frames {options.max_frames} "
                           f"ends the run at frame {options.max_frames - 1}")
    if options.output is not None:
        _check_output(options.output)


def run(options: RunOptions, notify: Callable[[str], None] = _notice) -> RunSummary:
    """Segment the source's frames; return what happened. Raises ``USER_ERRORS`` for bad input."""
    _validate_options(options)
    first_mask = _read_mask(options.mask, "--mask") if options.mask is not None else None
    added = [(frame, path, _read_mask(path, "--add-mask")) for frame, path in options.add_masks]
    window = None

    engines_dir, checkpoint, bundled_size = resolve_model(options.engines, options.checkpoint, notify)
    # The source first: it is the cheap thing to get wrong (a typo in a path), engines take seconds.
    source = open_source(options.camera, options.video, options.frames, notify=notify)
    engines: EngineSet | None = None
    writer: AsyncOutputWriter | None = None
    display = None
    progress: _Progress | None = None
    try:
        frames = _with_last_flag(iter(source), options.max_frames, lookahead=not source.info.live)
        first = next(frames, None)
        if first is None:
            raise RunError(f"{source.info.name} delivered no frame")
        shape = (first[1].shape[0], first[1].shape[1])
        if min(shape) < MIN_FRAME_SIDE:  # nothing to segment, and no encoder takes such a video
            raise RunError(f"{source.info.name}: frames are {shape[1]}x{shape[0]}, too small to segment "
                           f"(at least {MIN_FRAME_SIDE}x{MIN_FRAME_SIDE})")
        if first_mask is None:  # from the first frame: --box/--point, or boxes drawn in the window
            if not options.boxes and not options.points:
                window = display = Window(options.output or Path("."), notify=notify, draw=overlay)
                choice = window.select(first[1])
                if choice.kind != "start":
                    return RunSummary(interrupted=False)
                first_mask = MaskFile(first_ids(first[1], choice.boxes, ()), explicit_ids=True)
            else:
                first_mask = MaskFile(first_ids(first[1], options.boxes, options.points), explicit_ids=True)
        all_ids, planned = plan_object_ids(first_mask, added)
        all_ids, box_adds = plan_box_ids(all_ids, options.add_boxes)
        _check_aspect(first_mask.ids.shape, shape, str(options.mask))
        for item in planned:
            _check_aspect(item.ids.shape, shape, str(item.path))

        engines = open_engines(engines_dir, checkpoint, options.backend, options.device, options.precision,
                               frame_size=options.frame_size or bundled_size)
        summary = RunSummary(backend=engines.describe())
        limit = engines.manifest.max_objects or max(DEFAULT_MAX_OBJECTS, len(all_ids))
        if len(all_ids) > limit:
            raise RunError(
                f"--mask and --add-mask name {len(all_ids)} objects; these engines take at most {limit} "
                f"(re-export with --max-objects {len(all_ids)})"
            )
        _check_top_k(options.memory, engines.manifest.padded_size or padded_size(*shape, STRIDE))
        for item in planned:
            notify(item.describe())
        if options.output is None:  # a live run without it ends with nothing on disk: say so as it starts
            notify("no --output: masks, overlay.mp4 and stats.csv are not saved (add --output DIR to keep them)")
        extra_masks = {item.frame: item for item in planned}

        session = Session(engines, options.memory, options.save, max_objects=limit, timing=options.output is not None)
        if engines.device.type == "cuda":  # on a CPU the step is always eager: no line
            notify(f"step: {session.step_mode}" + "".join(f"; {note}" for note in session.notes))
        upload = FrameUploader(engines.device)
        if options.show and display is None:
            display = Display(notify=notify)
        restart: tuple[Box, ...] = ()
        total = source.info.frame_count
        if options.max_frames is not None:
            total = min(total or options.max_frames, options.max_frames)
        progress = _Progress(total, options.progress, options.progress_every_s)
        started = time.perf_counter()
        try:
            for index, frame, is_last in itertools.chain([first], frames):
                frame_shape = (frame.shape[0], frame.shape[1])
                mask = None
                if restart:  # `r` in the window: a new stream from new boxes
                    mask, restart = box_ids(frame, ("r in the window", restart, 1), notify), ()
                    if mask is not None:
                        session.reset()
                elif index == 0:
                    mask = fit_mask(first_mask.ids, frame_shape, str(options.mask), notify)
                    _check_engine_aspect(frame_shape, engines.manifest.frame_size, notify)
                elif index in box_adds:
                    mask = box_ids(frame, box_adds.pop(index), notify)
                elif index in extra_masks:
                    item = extra_masks.pop(index)
                    mask = fit_mask(item.ids, frame_shape, str(item.path), notify)
                probs = session.step(upload(frame), None if mask is None else torch.from_numpy(mask), is_last=is_last)
                summary.frames += 1
                if options.output is not None or display is not None:
                    labels = session.labels(probs)  # (H, W) uint8 on the device; no sync here
                    if options.output is not None:
                        if writer is None:  # only now: a run refused earlier leaves no folder
                            writer = _open_writer(options.output, source.info.fps, engines, options.writer_queue, notify,
                                                  options.lost_after)
                            if options.mask is None:
                                write_first_mask(options.output, first_mask.ids, notify)
                        writer.submit(index, frame, labels, session.last_stats)
                    if display is not None and not display.show(frame, labels.cpu().numpy()):  # a window needs it now
                        break
                    request = window.take_request() if window is not None else None
                    if request is not None and request.kind == "restart":
                        restart = request.boxes
                    elif request is not None:  # b: boxes for new objects, or one redrawing an object
                        first_id = request.target or max(session.object_ids, default=0) + 1
                        box_adds[index + 1] = ("b in the window", request.boxes, first_id)  # on the next frame
                progress.update(summary.frames, time.perf_counter() - started)
        except KeyboardInterrupt:
            summary.interrupted = True
        finally:
            summary.seconds = time.perf_counter() - started
            summary.stored_frames = session.stored_frames
            summary.objects = session.num_objects
            summary.dropped = source.dropped
        for frame_index in sorted(extra_masks):
            notify(f"--add-mask for frame {frame_index} was not used: the source ended before it")
    finally:
        if progress is not None:
            progress.close()
        try:
            if writer is not None:
                writer.close()  # drains the queue: every segmented frame is written
        finally:
            if display is not None:
                display.close()
            source.close()
            if engines is not None:
                engines.close()
    return summary


def _open_writer(
    output: Path, fps: float | None, engines: EngineSet, queue_size: int, notify: Callable[[str], None],
    lost_after: int = DEFAULT_LOST_AFTER,
) -> AsyncOutputWriter:
    try:
        lost = LostObjects(lost_after, notify) if lost_after > 0 else None
        sink = OutputWriter(output, fps=fps or 25.0, notify=notify, lost=lost)
    except OSError as error:
        raise RunError(f"cannot write to --output {output}: {error.strerror or error}") from None
    return AsyncOutputWriter(sink, engines.device, max_pending=queue_size)


class _Progress:
    """Progress while frames are segmented: a tqdm bar on an interactive terminal; where
    stderr is a file or a pipe (a service, a log), one plain ``progress:`` line every
    ``every_s`` seconds, so a long run is never silent."""

    def __init__(self, total: int | None, enabled: bool, every_s: float, stream=None) -> None:
        self.total = total
        self.every_s = every_s
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self._bar = None
        self._last = time.monotonic()
        if not enabled:
            return
        if _is_tty(self.stream):
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="frame", dynamic_ncols=True, leave=False, file=self.stream)

    def update(self, frames: int, seconds: float) -> None:
        if not self.enabled:
            return
        fps = frames / seconds if seconds > 0 else 0.0
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix_str(f"{fps:.1f} FPS", refresh=False)
            return
        now = time.monotonic()
        if now - self._last >= self.every_s:
            self._last = now
            of = f"/{self.total}" if self.total else ""
            print(f"progress: frame {frames}{of}, {fps:.1f} FPS, {seconds:.0f} s", file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _is_tty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False

"""Run one stream end to end: source -> session -> outputs. The library behind ``eamstcn-run``.

:func:`run` reads as the run goes: open the source, plan the objects on its first frame,
open the engines and the session, open the outputs, segment frame by frame, finish.
Everything that can be refused is refused before the first frame is segmented (options
and masks, the model, the source and its first frame, object ids, top-k against the
memory), with a ValueError subclass and a one-line message (:data:`USER_ERRORS`); the
output folder is made only at the first segmented frame, so a refused run leaves nothing
behind. What the run opened is closed in reverse order on every way out (an error,
Ctrl-C, SIGTERM through :mod:`eamstcn.runtime.termination`): the writer drains first, so
what was segmented is kept.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, closing
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from eamstcn.data.davis_io import MaskError, MaskFile
from eamstcn.default_model import BundledModelError, BundledModelMissing, bundled_model
from eamstcn.graph_spec import STRIDE
from eamstcn.notices import notice
from eamstcn.ops import padded_size
from eamstcn.runtime.engines.base import EngineError, EngineSet
from eamstcn.runtime.engines.factory import open_engines
from eamstcn.runtime.manifest import EXPORT_HINT, ManifestError
from eamstcn.runtime.marking import box_ids, first_ids
from eamstcn.runtime.mask_plan import ASPECT_TOLERANCE, ObjectPlan, fit_mask, plan_objects, read_mask
from eamstcn.runtime.progress import Progress
from eamstcn.runtime.prompts import Box, PromptError
from eamstcn.runtime.run_options import RunError, RunOptions, check_output
from eamstcn.runtime.run_outputs import RunOutputs
from eamstcn.runtime.session import DEFAULT_MAX_OBJECTS, Session, SessionError
from eamstcn.runtime.sinks import Display, OutputError, overlay
from eamstcn.runtime.sources import FrameUploader, SourceError, open_source
from eamstcn.runtime.window import Window, WindowError

DEFAULT_ENGINES = Path("engines")
#: Frames smaller than this (either side) are refused: nothing to segment at 1x1.
MIN_FRAME_SIDE = 16

USER_ERRORS: tuple[type[Exception], ...] = (
    RunError, SourceError, ManifestError, EngineError, MaskError, SessionError, OutputError, BundledModelError,
    PromptError, WindowError,
)


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


def run(options: RunOptions, notify: Callable[[str], None] = notice) -> RunSummary:
    """Segment the source's frames; return what happened. Raises ``USER_ERRORS`` for bad input."""
    if options.output is not None:
        check_output(options.output)
    first_mask = read_mask(options.mask, "--mask") if options.mask is not None else None
    added = [(frame, path, read_mask(path, "--add-mask")) for frame, path in options.add_masks]
    engines_dir, checkpoint, bundled_size = resolve_model(options.engines, options.checkpoint, notify)

    with ExitStack() as stack:
        # The source first: it is the cheap thing to get wrong (a typo in a path), engines take seconds.
        source = stack.enter_context(open_source(options.camera, options.video, options.frames, notify=notify))
        frames = _with_last_flag(iter(source), options.max_frames, lookahead=not source.info.live)
        first = _first_frame(frames, source.info.name)
        shape = (first[1].shape[0], first[1].shape[1])

        window = None
        if first_mask is None:
            first_mask, window = _first_objects(stack, options, first[1], notify)
            if first_mask is None:  # the user left the window without boxes
                return RunSummary(interrupted=False)
        plan = plan_objects(first_mask, str(options.mask), added, options.add_boxes, shape)

        engines = stack.enter_context(open_engines(engines_dir, checkpoint, options.backend, options.device,
                                                   options.precision, frame_size=options.frame_size or bundled_size))
        session = _open_session(engines, plan, options, shape, notify)

        display = window
        if options.show and window is None:
            display = stack.enter_context(closing(Display(notify=notify)))
        # Frame 0's notices last, right before the loop, in the order users have seen them.
        plan.first = fit_mask(plan.first, shape, plan.first_name, notify)
        _notice_stretch(shape, engines.manifest.frame_size, notify)
        outputs = None
        if options.output is not None:
            outputs = stack.enter_context(RunOutputs(
                options.output, source.info.fps, engines.device, queue_size=options.writer_queue,
                lost_after=options.lost_after, overlay=options.overlay, first_ids=plan.first if options.mask is None else None, notify=notify,
            ))

        summary = RunSummary(backend=engines.describe())
        total = _total(source.info.frame_count, options.max_frames)
        with Progress(total, options.progress, options.progress_every_s) as progress:
            summary.frames, summary.seconds, summary.interrupted = _segment(
                itertools.chain([first], frames), session, plan, outputs, display, window, progress, notify)
        summary.stored_frames, summary.objects, summary.dropped = session.stored_frames, session.num_objects, source.dropped
        for line in plan.unused():
            notify(line)
    return summary


def _segment(
    frames: Iterable[tuple[int, np.ndarray, bool]], session: Session, plan: ObjectPlan, outputs: RunOutputs | None,
    display: Display | Window | None, window: Window | None, progress: Progress, notify: Callable[[str], None],
) -> tuple[int, float, bool]:
    """The loop: each frame (H, W, 3) RGB with its planned mask through the session, to the
    outputs and the window. Returns (frames segmented, seconds, interrupted by Ctrl-C/SIGTERM)."""
    upload = FrameUploader(session.device)
    restart: tuple[Box, ...] = ()  # boxes from `r` in the window: a new stream starts at the next frame
    count, started = 0, time.perf_counter()
    try:
        for index, frame, is_last in frames:
            if restart:
                mask, restart = box_ids(frame, ("r in the window", restart, 1), notify), ()
                if mask is not None:
                    session.reset()
                    if outputs is not None:
                        outputs.restart(index)
            else:
                mask = plan.mask_at(index, frame, notify)
            probs = session.step(upload(frame), None if mask is None else torch.from_numpy(mask), is_last=is_last)
            count += 1
            if outputs is not None or display is not None:
                labels = session.labels(probs)  # (H, W) uint8 on the device; no sync here
                if outputs is not None:
                    outputs.submit(index, frame, labels, session.last_stats)
                if display is not None and not display.show(frame, labels.cpu().numpy()):  # a window needs it now
                    break
                request = window.take_request() if window is not None else None
                if request is not None and request.kind == "restart":
                    restart = request.boxes
                elif request is not None:  # b: boxes for new objects, or one redrawing an object
                    first_id = request.target or max(session.object_ids, default=0) + 1
                    plan.boxes[index + 1] = ("b in the window", request.boxes, first_id)  # on the next frame
            progress.update(count, time.perf_counter() - started)
    except KeyboardInterrupt:
        return count, time.perf_counter() - started, True
    return count, time.perf_counter() - started, False


# --------------------------------------------------------------------------- before the loop


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


def _first_frame(frames: Iterator[tuple[int, np.ndarray, bool]], name: str) -> tuple[int, np.ndarray, bool]:
    """The first (index, frame (H, W, 3) RGB, is_last); a source that has none, or frames
    too small to segment, is refused."""
    first = next(frames, None)
    if first is None:
        raise RunError(f"{name} delivered no frame")
    height, width = first[1].shape[:2]
    if min(height, width) < MIN_FRAME_SIDE:  # nothing to segment, and no encoder takes such a video
        raise RunError(f"{name}: frames are {width}x{height}, too small to segment "
                       f"(at least {MIN_FRAME_SIDE}x{MIN_FRAME_SIDE})")
    return first


def _first_objects(
    stack: ExitStack, options: RunOptions, frame: np.ndarray, notify: Callable[[str], None]
) -> tuple[MaskFile | None, Window | None]:
    """Frame 0's objects without ``--mask``: ``--box``/``--point`` on ``frame`` (H, W, 3) RGB,
    or boxes drawn in the window, which stays open for the run on ``stack``. The mask is
    None when the user leaves the window without boxes."""
    if options.boxes or options.points:
        return MaskFile(first_ids(frame, options.boxes, options.points), explicit_ids=True), None
    window = stack.enter_context(closing(Window(options.output or Path("."), notify=notify, draw=overlay)))
    choice = window.select(frame)
    if choice.kind != "start":
        return None, window
    return MaskFile(first_ids(frame, choice.boxes, ()), explicit_ids=True), window


def _open_session(
    engines: EngineSet, plan: ObjectPlan, options: RunOptions, shape: tuple[int, int], notify: Callable[[str], None]
) -> Session:
    """The session, once the engines are known to take the plan's objects and top-k within
    the memory for frames (H, W); with the lines that say what the run will do."""
    limit = engines.manifest.max_objects or max(DEFAULT_MAX_OBJECTS, len(plan.ids))
    if len(plan.ids) > limit:
        raise RunError(
            f"--mask and --add-mask name {len(plan.ids)} objects; these engines take at most {limit} "
            f"(re-export with --max-objects {len(plan.ids)})"
        )
    padded = engines.manifest.padded_size or padded_size(*shape, STRIDE)
    problem = options.memory.top_k_problem((padded[0] // STRIDE, padded[1] // STRIDE))
    if problem is not None:
        raise RunError(problem)
    for item in plan.added:
        notify(item.describe())
    if options.output is None:  # a live run without it ends with nothing on disk: say so as it starts
        notify("no --output: masks, overlay.mp4 and stats.csv are not saved (add --output DIR to keep them)")
    session = Session(engines, options.memory, options.save, max_objects=limit, timing=options.output is not None)
    if engines.device.type == "cuda":  # on a CPU the step is always eager: no line
        notify(f"step: {session.step_mode}" + "".join(f"; {note}" for note in session.notes))
    return session


def _notice_stretch(shape: tuple[int, int], engine_size: tuple[int, int] | None, notify: Callable[[str], None]) -> None:
    """Frames (H, W) are resized to the bundle's frame size; say so when that stretches them."""
    if engine_size is None:
        return
    (height, width), (engine_h, engine_w) = shape, engine_size
    if abs(height / width - engine_h / engine_w) / (engine_h / engine_w) > ASPECT_TOLERANCE:
        notify(
            f"frames are {width}x{height} but the engines were exported for {engine_w}x{engine_h}: "
            "frames are stretched to fit (export with --size matching the source for best results)"
        )


def _total(frame_count: int | None, max_frames: int | None) -> int | None:
    """Frames the run will segment, where known (for the progress bar)."""
    if max_frames is None:
        return frame_count
    return min(frame_count or max_frames, max_frames)

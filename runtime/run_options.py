"""What ``eamstcn-run`` takes: :class:`RunOptions`, checked once, when it is made.

Each option is checked in one place. The memory and save configs check their own fields
(:mod:`eamstcn.runtime.config`); :class:`RunOptions` checks its own fields and how they
combine; :func:`check_output` checks the ``--output`` path on the disk. Each refusal is a
:class:`RunError` with one line that names the flag the user typed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from eamstcn.fileio import non_utf8_path, output_problem
from eamstcn.runtime.config import MemoryConfig, SaveConfig
from eamstcn.runtime.lost import DEFAULT_LOST_AFTER
from eamstcn.runtime.marking import AddBox
from eamstcn.runtime.progress import PROGRESS_EVERY_S
from eamstcn.runtime.prompts import Box, Point


class RunError(ValueError):
    """A run option that cannot be used; one line meant for the user."""


@dataclass(frozen=True)
class RunOptions:
    """Everything ``eamstcn-run`` parses; exactly one of camera / video / frames; the first
    objects from ``mask``, or ``boxes``/``points`` on the first frame, or (``show`` and
    neither) boxes drawn in the window. Raises :class:`RunError` when the options cannot
    make a run."""

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
    #: Write overlay.mp4 in --output. With it a run's memory grows ~75 bytes a frame (the
    #: mp4's per-frame index, written when the file closes): off for day-long recordings.
    overlay: bool = True
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

    def __post_init__(self) -> None:
        sources = [value for value in (self.camera, self.video, self.frames) if value is not None]
        if len(sources) != 1:
            raise RunError("give exactly one source: --camera N, --video PATH_OR_URL or --frames DIR")
        if self.max_frames is not None and self.max_frames < 1:
            raise RunError(f"--max-frames must be at least 1, got {self.max_frames}")
        if self.lost_after < 0:
            raise RunError(f"--lost-after must be 0 (never) or more, got {self.lost_after}")
        mask_frames = [frame for frame, _ in self.add_masks]
        for frame in mask_frames:
            if frame < 1:
                raise RunError(f"--add-mask frame must be >= 1 (frame 0 uses --mask), got {frame}")
        if len(set(mask_frames)) != len(mask_frames):
            raise RunError("--add-mask: give each frame once (one mask file may hold several objects)")
        if self.mask is not None and (self.boxes or self.points):
            raise RunError("give the first objects one way: --mask, or --box/--point")
        if self.mask is None and not (self.boxes or self.points or self.show):
            raise RunError("--mask, --box or --point is required (or --show to draw boxes in a window; try --demo)")
        box_frames = [add.frame for add in self.add_boxes]
        if min(box_frames, default=1) < 1:
            raise RunError("--add-box frame must be >= 1 (frame 0 uses --box)")
        if len(set(box_frames)) != len(box_frames) or set(box_frames) & set(mask_frames):
            raise RunError("--add-box: give each frame once, and not a frame that has an --add-mask")
        if self.max_frames is not None:  # else such a mask was "not used: the source ended before it"
            late = sorted(frame for frame in [*mask_frames, *box_frames] if frame >= self.max_frames)
            if late:
                raise RunError(f"--add-mask/--add-box at frame {late[0]} is never reached: --max-frames {self.max_frames} "
                               f"ends the run at frame {self.max_frames - 1}")


def parse_add_mask(text: str) -> tuple[int, Path]:
    """``FRAME:PATH`` -> (frame index, path)."""
    frame, sep, path = text.partition(":")
    if not sep or not frame.strip().isdigit() or not path:
        raise RunError(f"--add-mask takes FRAME:PATH (e.g. 40:second_object.png), got {text!r}")
    return int(frame), Path(path)


def check_output(output: Path) -> None:
    """The output must be a folder, or a path where one can be made; checked before the
    run, which creates it only at the first segmented frame."""
    shown = non_utf8_path(output)
    if shown is not None:  # OpenCV's video writer would crash on it after the first mask was written
        raise RunError(f"--output {shown}: the name is not valid UTF-8, which OpenCV cannot write to; choose another name")
    if os.path.lexists(output) and not os.path.isdir(output):  # os.path: no OSError on a name too long
        raise RunError(f"--output {output} is a file: give a folder (it will hold masks/, overlay.mp4 and stats.csv)")
    problem = output_problem(output)  # a name too long, a file on the way, a parent not writable
    if problem is not None:
        raise RunError(f"--output {output}: {problem}")

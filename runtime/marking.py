"""How a run gets its objects when no mask file is given: ``--box``/``--point`` on the
first frame, ``--add-box`` later, or boxes drawn in the ``--show`` window.

The runner calls these at annotated frames only (rare, off the steady step).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from eamstcn.data.davis_io import write_indexed_png
from eamstcn.runtime.prompts import Box, Point, PromptError, format_box, parse_box, prompt_ids

#: The derived first mask is written here in ``--output`` (reusable with ``--mask``).
FIRST_MASK_NAME = "first-mask.png"


@dataclass(frozen=True)
class AddBox:
    """``--add-box FRAME:X,Y,W,H[:ID]``: at ``frame``, a new object (``object_id`` None)
    or a re-mark of a tracked one."""

    frame: int
    box: Box
    object_id: int | None = None

    def describe(self) -> str:
        suffix = f":{self.object_id}" if self.object_id is not None else ""
        return f"--add-box {self.frame}:{format_box(self.box)}{suffix}"


def parse_add_box(text: str) -> AddBox:
    """``FRAME:X,Y,W,H`` (a new object) or ``FRAME:X,Y,W,H:ID`` (re-mark object ID)."""
    parts = text.split(":")
    usage = f"--add-box takes FRAME:X,Y,W,H or FRAME:X,Y,W,H:ID (e.g. 40:120,80,60,90), got {text!r}"
    if len(parts) not in (2, 3) or not parts[0].strip().isdigit():
        raise PromptError(usage)
    object_id = None
    if len(parts) == 3:
        if not parts[2].strip().isdigit() or not 1 <= int(parts[2]) <= 255:
            raise PromptError(usage + "; ID is an object id 1..255")
        object_id = int(parts[2])
    return AddBox(int(parts[0]), parse_box(parts[1], "--add-box"), object_id)


#: What a later frame gets: (how to name it in messages, boxes, the first box's object id).
BoxesAt = tuple[str, tuple[Box, ...], int]


def plan_box_ids(tracked: Sequence[int], adds: Sequence[AddBox]) -> tuple[tuple[int, ...], dict[int, BoxesAt]]:
    """Ids for ``--add-box``: a re-mark keeps its id; a new object takes the next id after
    the largest planned so far, in frame order. Returns (all ids, frame -> boxes there)."""
    ids = sorted(set(tracked))
    by_frame: dict[int, BoxesAt] = {}
    for add in sorted(adds, key=lambda item: item.frame):
        object_id = add.object_id if add.object_id is not None else (max(ids, default=0) + 1)
        if object_id > 255:
            raise PromptError(f"{add.describe()} would need an object id above 255")
        ids = sorted(set(ids) | {object_id})
        by_frame[add.frame] = (add.describe(), (add.box,), object_id)
    return tuple(ids), by_frame


def first_ids(frame: np.ndarray, boxes: Sequence[Box], points: Sequence[Point]) -> np.ndarray:
    """The first frame (H, W, 3) RGB and its prompts -> ids (H, W) uint8; raises PromptError."""
    return prompt_ids(frame, boxes, points)


def box_ids(frame: np.ndarray, marks: BoxesAt, notify: Callable[[str], None]) -> np.ndarray | None:
    """Boxes at a later frame -> ids (H, W) uint8 (the first box's id, the next...), or None
    (said in one line) when one finds no object: a run already under way goes on without it."""
    what, boxes, first_id = marks
    try:
        return prompt_ids(frame, boxes, first_id=first_id)
    except PromptError as error:
        notify(f"{what}: skipped: {str(error).split(': ', 1)[-1]}")
        return None


def write_first_mask(output: Path, ids: np.ndarray, notify: Callable[[str], None]) -> None:
    path = output / FIRST_MASK_NAME
    write_indexed_png(path, ids)
    notify(f"first mask from the boxes/points written to {path} (reuse it with --mask)")

"""Which object ids every annotated frame of a run brings, planned before the first step.

The first frame's ids come from ``--mask`` as read, or from ``--box``/``--point`` (or boxes
drawn in the window) through :mod:`eamstcn.runtime.marking`. Later frames add or correct
objects with ``--add-mask`` files and ``--add-box``. Planning every id up front lets the
run refuse too many objects, or ids above 255, before the engines are opened; the session's
:class:`~eamstcn.runtime.objects.ObjectRegistry` then maps these ids to dense indices.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from eamstcn.data.davis_io import MaskFile, read_user_mask
from eamstcn.runtime.marking import AddBox, BoxesAt, box_ids, plan_box_ids
from eamstcn.runtime.run_options import RunError

#: Relative difference of H/W ratios up to which a mask counts as the frames' aspect ratio.
ASPECT_TOLERANCE = 0.01


def read_mask(path: Path, option: str) -> MaskFile:
    """A mask file the user gave with ``option``; one with no object is refused."""
    mask = read_user_mask(path)
    if not mask.ids.any():
        raise RunError(f"{option} {path} has no object (every pixel is background)")
    return mask


def fit_mask(ids: np.ndarray, frame_shape: tuple[int, int], source: str, notify: Callable[[str], None]) -> np.ndarray:
    """A mask (h, w) for frames (H, W): same size as is; same aspect ratio resized (nearest)."""
    height, width = frame_shape
    mask_h, mask_w = ids.shape
    if (mask_h, mask_w) == (height, width):
        return ids
    check_aspect(ids.shape, frame_shape, source)
    notify(f"mask {source} is {mask_w}x{mask_h}, frames are {width}x{height}: resizing the mask (nearest)")
    return cv2.resize(ids, (width, height), interpolation=cv2.INTER_NEAREST)


def check_aspect(mask_shape: tuple[int, ...], frame_shape: tuple[int, int], source: str) -> None:
    """Refuse a mask (h, w) whose aspect ratio is not the frames' (H, W): resizing it would
    move the objects off what they mark."""
    (mask_h, mask_w), (height, width) = mask_shape, frame_shape
    ratio, mask_ratio = height / width, mask_h / mask_w
    if abs(mask_ratio - ratio) / ratio > ASPECT_TOLERANCE:
        raise RunError(f"mask {source} is {mask_w}x{mask_h} but the frames are {width}x{height}: another aspect ratio")


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


@dataclass
class ObjectPlan:
    """Every annotated frame of a run and the ids it brings; the loop asks :meth:`mask_at`
    for each frame's mask, which uses up what it returns."""

    #: Frame 0's ids (h, w) uint8 (the run fits them to the frames before the loop), and
    #: how messages name where they came from.
    first: np.ndarray
    first_name: str
    #: Every id the run will track, ascending.
    ids: tuple[int, ...]
    #: The ``--add-mask`` files in frame order (for the lines that say what each does).
    added: list[AddedMask]
    #: Frame -> the ``--add-mask`` not reached yet.
    masks: dict[int, AddedMask]
    #: Frame -> boxes not reached yet: ``--add-box``, and ``b`` in the window.
    boxes: dict[int, BoxesAt]

    def mask_at(self, index: int, frame: np.ndarray, notify: Callable[[str], None]) -> np.ndarray | None:
        """Ids (H, W) uint8 for frame ``index`` (H, W, 3) RGB; None where nothing is drawn,
        or where boxes find no object (said in one line)."""
        if index == 0:
            return self.first
        if index in self.boxes:
            return box_ids(frame, self.boxes.pop(index), notify)
        if index in self.masks:
            item = self.masks.pop(index)
            return fit_mask(item.ids, (frame.shape[0], frame.shape[1]), str(item.path), notify)
        return None

    def unused(self) -> list[str]:
        """One line per ``--add-mask`` the source ended before."""
        return [f"--add-mask for frame {frame} was not used: the source ended before it" for frame in sorted(self.masks)]


def plan_objects(
    first: MaskFile, first_name: str, added: list[tuple[int, Path, MaskFile]], add_boxes: Sequence[AddBox],
    frame_shape: tuple[int, int],
) -> ObjectPlan:
    """The plan for frames (H, W) = ``frame_shape``: mask ids first, then ``--add-box`` ids
    after them. Raises :class:`RunError` for ids above 255 or a mask of another aspect ratio."""
    ids, planned = plan_object_ids(first, added)
    ids, boxes = plan_box_ids(ids, add_boxes)
    check_aspect(first.ids.shape, frame_shape, first_name)
    for item in planned:
        check_aspect(item.ids.shape, frame_shape, str(item.path))
    return ObjectPlan(first.ids, first_name, ids, planned, {item.frame: item for item in planned}, boxes)

"""Boxes and clicks -> a first mask, with no weights: OpenCV's GrabCut from a better seed.

A box ``X,Y,W,H`` is in pixels of the source frame, as ``cv2.selectROI`` returns it. The
mask comes from GrabCut seeded as follows (chosen by measurement, see
:mod:`eamstcn.runtime.prompt_eval` and the README's table):

- outside the box: definite background; inside: probable background, except
- the ellipse inscribed in the box: probable foreground (objects rarely fill a box's
  corners), and its inner ellipse at :data:`CORE` of the axes: definite foreground (the
  box was drawn around *something*: plain GrabCut can and does drop the whole object);
- GrabCut only sees the box plus :data:`CONTEXT` times its size on each side: the
  background colours near the object are the ones that matter, and the time is bounded
  by the box, not the frame.

A click ``X,Y`` becomes a square box of :data:`POINT_BOX` of the frame's shorter side
around it, with a small definite-foreground disc on the click instead of the core.

Every mask goes through the checks a mask file does: an empty mask or one that covers
the whole frame is one :class:`PromptError` line.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

Box = tuple[int, int, int, int]
Point = tuple[int, int]

#: Definite-foreground inner ellipse, as a fraction of the box's half-axes.
CORE = 0.2
#: Context GrabCut sees on each side of the box, as a fraction of the box's width/height.
CONTEXT = 1.0
#: GrabCut iterations (5 is OpenCV's usual; 10 measured no better for twice the time).
ITERATIONS = 5
#: Side of the box around a click, as a fraction of the frame's shorter side.
POINT_BOX = 0.3
#: Radius in pixels of the definite-foreground disc on a click.
POINT_RADIUS = 3
#: Smallest box side in pixels GrabCut can work with (its colour models need pixels).
MIN_SIDE = 4


class PromptError(ValueError):
    """A box or point that cannot give a mask; one line meant for the user."""


def parse_box(text: str, option: str = "--box") -> Box:
    """``X,Y,W,H`` (integers, W and H >= MIN_SIDE) -> a box."""
    parts = text.split(",")
    try:
        x, y, w, h = (int(part) for part in parts)
    except ValueError:
        raise PromptError(f"{option} takes X,Y,W,H in pixels of the frame (e.g. 120,80,200,150), got {text!r}") from None
    if x < 0 or y < 0 or w < MIN_SIDE or h < MIN_SIDE:
        raise PromptError(f"{option} {text}: X and Y must be >= 0, W and H at least {MIN_SIDE} pixels")
    return x, y, w, h


def parse_point(text: str, option: str = "--point") -> Point:
    """``X,Y`` (integers >= 0) -> a point."""
    try:
        x, y = (int(part) for part in text.split(","))
    except ValueError:
        raise PromptError(f"{option} takes X,Y in pixels of the frame (e.g. 320,240), got {text!r}") from None
    if x < 0 or y < 0:
        raise PromptError(f"{option} {text}: X and Y must be >= 0")
    return x, y


def format_box(box: Box) -> str:
    return ",".join(str(v) for v in box)


def check_box(box: Box, frame_shape: tuple[int, int], option: str = "--box") -> None:
    """The box must lie inside the frame (H, W): a box past the edge means another frame size."""
    height, width = frame_shape
    x, y, w, h = box
    if x + w > width or y + h > height:
        raise PromptError(f"{option} {format_box(box)} extends past the {width}x{height} frame (boxes are in pixels of the source frame)")


def point_box(point: Point, frame_shape: tuple[int, int]) -> Box:
    """The square box of POINT_BOX of the shorter side around a click, moved inside the frame."""
    height, width = frame_shape
    side = max(MIN_SIDE, int(round(POINT_BOX * min(height, width))))
    x = int(np.clip(point[0] - side // 2, 0, max(0, width - side)))
    y = int(np.clip(point[1] - side // 2, 0, max(0, height - side)))
    return x, y, min(side, width), min(side, height)


def _grabcut(
    frame: np.ndarray, box: Box, point: Point | None = None, *,
    core: float = CORE, context: float | None = CONTEXT, ellipse: bool = True, lab: bool = False,
) -> np.ndarray:
    """frame (H, W, 3) uint8 RGB, box inside it -> (H, W) bool mask. The keywords are the
    seed's choices (defaults: the chosen ones); ``prompt_eval`` measures the others."""
    height, width = frame.shape[:2]
    x, y, w, h = box
    if context is None:  # the whole frame
        x0, y0, x1, y1 = 0, 0, width, height
    else:
        margin_x, margin_y = int(context * w) + 2, int(context * h) + 2
        x0, y0 = max(0, x - margin_x), max(0, y - margin_y)
        x1, y1 = min(width, x + w + margin_x), min(height, y + h + margin_y)
    crop = np.ascontiguousarray(frame[y0:y1, x0:x1])
    image = cv2.cvtColor(crop, cv2.COLOR_RGB2LAB if lab else cv2.COLOR_RGB2BGR)
    seeds = np.full(image.shape[:2], cv2.GC_BGD, np.uint8)
    bx, by = x - x0, y - y0
    seeds[by:by + h, bx:bx + w] = cv2.GC_PR_FGD if not ellipse else cv2.GC_PR_BGD
    centre = (bx + w // 2, by + h // 2)
    if ellipse:
        cv2.ellipse(seeds, centre, (max(1, w // 2), max(1, h // 2)), 0, 0, 360, int(cv2.GC_PR_FGD), -1)
    if point is None and core > 0:
        axes = (max(1, int(w * core / 2)), max(1, int(h * core / 2)))
        cv2.ellipse(seeds, centre, axes, 0, 0, 360, int(cv2.GC_FGD), -1)
    elif point is not None:
        cv2.circle(seeds, (point[0] - x0, point[1] - y0), POINT_RADIUS, int(cv2.GC_FGD), -1)
    background, foreground = np.zeros((1, 65)), np.zeros((1, 65))
    cv2.setRNGSeed(0)  # GrabCut's k-means draws from OpenCV's RNG: the same box gives the same mask
    cv2.grabCut(image, seeds, None, background, foreground, ITERATIONS, cv2.GC_INIT_WITH_MASK)
    mask = np.zeros((height, width), bool)
    mask[y0:y1, x0:x1] = (seeds == cv2.GC_FGD) | (seeds == cv2.GC_PR_FGD)
    return mask


def box_mask(frame: np.ndarray, box: Box) -> np.ndarray:
    """frame (H, W, 3) uint8 RGB, a box inside it -> (H, W) bool mask of the object in it."""
    return _grabcut(frame, box)


def point_mask(frame: np.ndarray, point: Point) -> np.ndarray:
    """frame (H, W, 3) uint8 RGB, a click inside it -> (H, W) bool mask of the object under it."""
    return _grabcut(frame, point_box(point, frame.shape[:2]), point)


def prompt_ids(frame: np.ndarray, boxes: Sequence[Box] = (), points: Sequence[Point] = (), first_id: int = 1) -> np.ndarray:
    """Boxes then points -> ids (H, W) uint8: ``first_id``, ``first_id + 1``, ... in that order.

    Where two objects' masks overlap the smaller one wins: a small object inside a large
    one's box is usually in front of it. Raises :class:`PromptError` when an object's
    mask is empty or the objects cover the whole frame.
    """
    height, width = frame.shape[:2]
    masks: list[tuple[str, np.ndarray]] = []
    for box in boxes:
        check_box(box, (height, width))
        masks.append((f"--box {format_box(box)}", box_mask(frame, box)))
    for point in points:
        if point[0] >= width or point[1] >= height:
            raise PromptError(f"--point {point[0]},{point[1]} is outside the {width}x{height} frame")
        masks.append((f"--point {point[0]},{point[1]}", point_mask(frame, point)))
    if first_id + len(masks) - 1 > 255:
        raise PromptError("object ids above 255: too many boxes and points")
    ids = np.zeros((height, width), np.uint8)
    order = sorted(range(len(masks)), key=lambda i: -int(masks[i][1].sum()))  # largest first, smallest last (on top)
    for i in order:
        name, mask = masks[i]
        if not mask.any():
            raise PromptError(f"{name}: no object found there (the derived mask is empty); draw a tighter box around it or give --mask")
        ids[mask] = first_id + i
    for i, (name, _) in enumerate(masks):
        if not (ids == first_id + i).any():
            raise PromptError(f"{name}: its object lies wholly under a smaller one's; give separate boxes or --mask")
    if ids.all():
        raise PromptError(f"the objects of {', '.join(name for name, _ in masks)} cover the whole frame: nothing is background; draw tighter boxes or give --mask")
    return ids

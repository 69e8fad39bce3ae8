"""Box/click -> first mask (GrabCut from the seed in runtime/prompts.py), parsing, checks."""

from __future__ import annotations

import numpy as np
import pytest

from eamstcn.runtime import prompts
from eamstcn.runtime.marking import parse_add_box, plan_box_ids
from eamstcn.runtime.prompts import PromptError, box_mask, parse_box, parse_point, point_box, point_mask, prompt_ids


def scene(height: int = 96, width: int = 128) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A textured green background, a red ellipse and a blue square: (frame, red truth, blue truth)."""
    rng = np.random.default_rng(0)
    frame = np.empty((height, width, 3), np.uint8)
    frame[:] = (40, 140, 60)
    frame = np.clip(frame + rng.integers(-20, 20, frame.shape), 0, 255).astype(np.uint8)
    yy, xx = np.mgrid[:height, :width]
    red = ((xx - 40) / 22.0) ** 2 + ((yy - 48) / 30.0) ** 2 <= 1
    blue = (xx >= 85) & (xx < 110) & (yy >= 20) & (yy < 45)
    frame[red] = (200, 40, 40)
    frame[blue] = (30, 30, 210)
    return frame, red, blue


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_box_gives_the_object_not_the_box() -> None:
    frame, red, _ = scene()
    mask = box_mask(frame, (18, 18, 45, 61))
    assert iou(mask, red) > 0.9
    assert np.array_equal(mask, box_mask(frame, (18, 18, 45, 61)))  # deterministic


def test_point_gives_the_object_under_it() -> None:
    frame, _, blue = scene()
    assert iou(point_mask(frame, (97, 32)), blue) > 0.8
    assert point_box((0, 0), (96, 128)) == (0, 0, 29, 29)  # moved inside the frame
    assert point_box((127, 95), (96, 128)) == (99, 67, 29, 29)


def test_prompt_ids_in_order_boxes_then_points() -> None:
    frame, red, blue = scene()
    ids = prompt_ids(frame, [(18, 18, 45, 61)], [(97, 32)])
    assert iou(ids == 1, red) > 0.9 and iou(ids == 2, blue) > 0.8


@pytest.mark.parametrize("text", ["1,2,3", "a,b,c,d", "-1,0,10,10", "0,0,2,10", ""])
def test_bad_boxes(text: str) -> None:
    with pytest.raises(PromptError, match="--box"):
        parse_box(text)


def test_bad_points_and_add_boxes() -> None:
    for text in ("1", "x,2", "-3,4"):
        with pytest.raises(PromptError, match="--point"):
            parse_point(text)
    for text in ("10,10,20,20", "x:1,1,9,9", "4:1,1,9,9:0", "4:1,1,9,9:x"):
        with pytest.raises(PromptError, match="--add-box"):
            parse_add_box(text)
    assert parse_add_box("40:1,2,30,40").object_id is None and parse_add_box("40:1,2,30,40:3").object_id == 3


def test_add_box_ids_follow_the_largest() -> None:
    ids, by_frame = plan_box_ids((1, 2), [parse_add_box("9:1,1,9,9"), parse_add_box("5:1,1,9,9:2"), parse_add_box("12:1,1,9,9")])
    assert ids == (1, 2, 3, 4)
    assert [by_frame[f][2] for f in (5, 9, 12)] == [2, 3, 4]


def test_box_outside_the_frame_and_point_outside() -> None:
    frame, _, _ = scene()
    with pytest.raises(PromptError, match="extends past the 128x96 frame"):
        prompt_ids(frame, [(100, 10, 40, 20)])
    with pytest.raises(PromptError, match="outside the 128x96 frame"):
        prompt_ids(frame, [], [(10, 200)])


def test_empty_and_whole_frame_masks_are_one_error(monkeypatch: pytest.MonkeyPatch) -> None:
    frame, _, _ = scene()
    monkeypatch.setattr(prompts, "box_mask", lambda f, b: np.zeros(f.shape[:2], bool))
    with pytest.raises(PromptError, match="no object found"):
        prompt_ids(frame, [(18, 18, 45, 61)])
    monkeypatch.setattr(prompts, "box_mask", lambda f, b: np.ones(f.shape[:2], bool))
    with pytest.raises(PromptError, match="cover the whole frame"):
        prompt_ids(frame, [(0, 0, 128, 96)])


def test_overlap_goes_to_the_smaller_object() -> None:
    frame, red, blue = scene()
    ids = prompt_ids(frame, [(15, 10, 100, 78), (80, 15, 36, 35)])
    assert (ids[blue] == 2).mean() > 0.9

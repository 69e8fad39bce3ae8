"""Measure box/click -> first mask against true first masks (issue 18's protocol).

    python -m eamstcn.runtime.prompt_eval [--data ../shared/data/davis2016-train-240p]

For every object of every sequence's first frame: the box is the bounding box of its
true mask, the click the true mask's most interior pixel (the maximum of its distance
transform). Prints mean and minimum IoU and the time per object for each seed tried; the
default of :mod:`eamstcn.runtime.prompts` is the row marked ``chosen``. Time is this
process's CPU time (GrabCut runs on one thread), so a busy machine does not inflate it.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from eamstcn.data.davis_io import annotation_paths, frame_paths, list_sequences, read_frame, read_mask
from eamstcn.runtime import prompts

DEFAULT_DATA = Path("../shared/data/davis2016-train-240p")


def _fill(frame: np.ndarray, box: prompts.Box) -> np.ndarray:
    x, y, w, h = box
    mask = np.zeros(frame.shape[:2], bool)
    mask[y:y + h, x:x + w] = True
    return mask


def _plain_grabcut(iterations: int) -> Callable[[np.ndarray, prompts.Box], np.ndarray]:
    def run(frame: np.ndarray, box: prompts.Box) -> np.ndarray:
        seeds = np.zeros(frame.shape[:2], np.uint8)
        cv2.setRNGSeed(0)
        cv2.grabCut(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), seeds, box, np.zeros((1, 65)), np.zeros((1, 65)),
                    iterations, cv2.GC_INIT_WITH_RECT)
        return (seeds == cv2.GC_FGD) | (seeds == cv2.GC_PR_FGD)
    return run


#: name -> (frame, box) -> mask. Each row changes one thing from the one above it.
BOX_METHODS: dict[str, Callable[[np.ndarray, prompts.Box], np.ndarray]] = {
    "box itself": _fill,
    "GrabCut rect, 5 iters": _plain_grabcut(5),
    "GrabCut rect, 10 iters": _plain_grabcut(10),
    "+ ellipse prob. FG": lambda f, b: prompts._grabcut(f, b, core=0, context=None),
    "+ core 0.2 definite FG": lambda f, b: prompts._grabcut(f, b, context=None),
    "+ core, Lab colours": lambda f, b: prompts._grabcut(f, b, context=None, lab=True),
    "+ core, context 0.5x box": lambda f, b: prompts._grabcut(f, b, context=0.5),
    "+ core, context 1x box (chosen)": prompts.box_mask,
    "+ core 0.35, context 1x box": lambda f, b: prompts._grabcut(f, b, core=0.35),
}


def load_objects(root: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(sequence, first frame (H, W, 3) RGB, one object's true mask (H, W) bool) per object."""
    resolution = next(p.name for p in (root / "JPEGImages").iterdir() if p.is_dir())
    objects = []
    for sequence in list_sequences(root, resolution):
        frame = read_frame(frame_paths(root, sequence, resolution)[0])
        ids = read_mask(annotation_paths(root, sequence, resolution)[0])
        objects += [(sequence, frame, ids == value) for value in np.unique(ids) if value]
    return objects


def bounding_box(mask: np.ndarray) -> prompts.Box:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)


def interior_point(mask: np.ndarray) -> prompts.Point:
    distance = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 5)
    y, x = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return int(x), int(y)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def measure(objects, method) -> tuple[float, float, str, float]:
    """(mean IoU, min IoU, the sequence with the min, CPU seconds per object)."""
    scores, seconds = [], 0.0
    for _, frame, truth, prompt in objects:
        started = time.process_time()
        mask = method(frame, prompt)
        seconds += time.process_time() - started
        scores.append(iou(mask, truth))
    worst = int(np.argmin(scores))
    return float(np.mean(scores)), float(scores[worst]), objects[worst][0], seconds / len(objects)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--only", default="", help="Rows whose name contains this text (default: all).")
    args = parser.parse_args()
    objects = load_objects(args.data)
    boxed = [(s, f, t, bounding_box(t)) for s, f, t in objects]
    clicked = [(s, f, t, interior_point(t)) for s, f, t in objects]
    print(f"{len(objects)} objects, {args.data}; OpenCV {cv2.__version__}, {cv2.getNumThreads()} threads")
    print("| prompt -> mask | mean IoU | min IoU (sequence) | CPU ms per object |")
    print("| --- | --- | --- | --- |")
    rows = [(f"box: {name}", boxed, method) for name, method in BOX_METHODS.items()]
    rows.append(("click: 0.3-side box around it, disc as definite FG", clicked, prompts.point_mask))
    for name, items, method in (row for row in rows if args.only in row[0]):
        mean, low, where, seconds = measure(items, method)
        print(f"| {name} | {mean:.3f} | {low:.3f} ({where}) | {seconds * 1000:.0f} |", flush=True)


if __name__ == "__main__":
    main()

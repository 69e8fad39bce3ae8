"""DAVIS semi-supervised metrics: region similarity J, boundary measure F and their statistics.

The definitions follow the official DAVIS-2017 evaluation code
(``davisvideochallenge/davis2017-evaluation``: ``db_eval_iou``, ``f_measure``, ``_seg2bmap``,
``db_statistics``) so that numbers are comparable with published results; the protocol is
stated in docs/EVALUATION.md. This is an independent implementation using numpy and
OpenCV only (no scikit-image at runtime), checked against a transcription of the
official algorithm in ``tests/test_metrics.py``.

Deliberate differences from the official code, none of which changes a DAVIS number:
  * void pixels are not supported: the official semi-supervised path maps the void label
    255 to background before building its void masks, so they are always empty there;
  * ``_seg2bmap``'s resizing branch (bmap of another size) is not implemented: DAVIS
    always evaluates at the mask's own size;
  * the decay binning uses integer indices where the official code casts them to uint8,
    which would wrap around for sequences longer than 256 frames.
"""

from __future__ import annotations

import math
from functools import lru_cache

import cv2
import numpy as np

__all__ = [
    "VOID_ID",
    "boundary_map",
    "boundary_measure",
    "boundary_tolerance",
    "disk",
    "evaluate_sequence",
    "object_statistics",
    "region_similarity",
]

#: DAVIS void / "don't care" label; the official code turns it into background, so it is
#: never an object.
VOID_ID = 255


def _as_bool_2d(mask: np.ndarray, name: str) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (H, W) mask, got shape {mask.shape}")
    # Any non-zero value is foreground, as in the official ``astype(bool)``.
    return mask.astype(bool, copy=False)


def _check_pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred_b = _as_bool_2d(pred, "pred")
    gt_b = _as_bool_2d(gt, "gt")
    if pred_b.shape != gt_b.shape:
        raise ValueError(f"pred {pred_b.shape} and gt {gt_b.shape} shapes differ")
    return pred_b, gt_b


def region_similarity(pred: np.ndarray, gt: np.ndarray) -> float:
    """Jaccard index J = |pred AND gt| / |pred OR gt| of two binary masks.

    Args:
        pred: (H, W) prediction; non-zero is foreground.
        gt: (H, W) ground truth; non-zero is foreground.

    Returns:
        J in [0, 1]; 1.0 when both masks are empty (the official convention: nothing to
        find and nothing found is a perfect score).
    """
    pred_b, gt_b = _check_pair(pred, gt)
    union = int(np.count_nonzero(pred_b | gt_b))
    if union == 0:
        return 1.0
    inter = int(np.count_nonzero(pred_b & gt_b))
    return inter / union


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """One-pixel-wide boundary of a binary mask, as ``_seg2bmap`` at the mask's own size.

    A pixel is on the boundary if it differs from its right, lower or lower-right
    neighbour. In the last row only the right neighbour counts, in the last column only
    the lower one, and the bottom-right pixel is never on the boundary. (The boundary
    thus sits half a pixel towards the origin from the true contour; the image border
    itself is not a boundary.)

    Args:
        mask: (H, W) mask; non-zero is foreground.

    Returns:
        (H, W) bool boundary map.
    """
    seg = _as_bool_2d(mask, "mask")
    h, w = seg.shape
    b = np.zeros((h, w), dtype=bool)
    if h == 0 or w == 0:
        return b
    # Interior pixels (all but the last row and column): compare with all three neighbours.
    core = seg[:-1, :-1]
    b[:-1, :-1] = (core != seg[:-1, 1:]) | (core != seg[1:, :-1]) | (core != seg[1:, 1:])
    # Last row: right neighbour only (there is no row below).
    b[-1, :-1] = seg[-1, :-1] != seg[-1, 1:]
    # Last column: lower neighbour only (there is no column to the right).
    b[:-1, -1] = seg[:-1, -1] != seg[1:, -1]
    # b[-1, -1] stays False: the corner pixel has no neighbour to compare with.
    return b


@lru_cache(maxsize=16)
def _disk_cached(radius: float) -> np.ndarray:
    # Same grid as skimage.morphology.disk: coordinates arange(-r, r + 1) on both axes,
    # keeping those with x^2 + y^2 <= r^2. For a non-integer r the grid is still
    # arange-based (like skimage), so the kernel matches it exactly in every case.
    coords = np.arange(-radius, radius + 1)
    xx, yy = np.meshgrid(coords, coords)
    k = ((xx**2 + yy**2) <= radius**2).astype(np.uint8)
    k.setflags(write=False)
    return k


def disk(radius: float) -> np.ndarray:
    """Disk structuring element, identical to ``skimage.morphology.disk(radius)``.

    Returns:
        (2r+1, 2r+1) uint8 array (for integer r), 1 where x^2 + y^2 <= r^2. Read-only
        (cached); copy it before modifying.
    """
    return _disk_cached(float(radius))


def boundary_tolerance(shape: tuple[int, int], bound_th: float = 0.008) -> float:
    """Boundary matching tolerance in pixels.

    ``bound_th < 1`` is a fraction of the image diagonal: r = ceil(bound_th * sqrt(H^2 + W^2))
    (8 px at 480x854); ``bound_th >= 1`` is taken as a radius in pixels directly.
    """
    if bound_th >= 1:
        return float(bound_th)
    h, w = shape
    return float(math.ceil(bound_th * math.hypot(h, w)))


def boundary_measure(pred: np.ndarray, gt: np.ndarray, bound_th: float = 0.008) -> float:
    """Boundary F-measure between a predicted and a ground-truth binary mask.

    Each boundary map is dilated with a disk of radius ``boundary_tolerance``;
    precision = |pred boundary AND dilated gt boundary| / |pred boundary|,
    recall = |gt boundary AND dilated pred boundary| / |gt boundary|.
    Empty boundaries: both empty -> P = R = 1; only the prediction's -> P = 1, R = 0;
    only the truth's -> P = 0, R = 1. F = 2PR / (P + R), 0 when P + R = 0.

    Args:
        pred: (H, W) prediction; non-zero is foreground.
        gt: (H, W) ground truth; non-zero is foreground.
        bound_th: tolerance, a fraction of the diagonal (< 1) or pixels (>= 1).

    Returns:
        F in [0, 1].
    """
    pred_b, gt_b = _check_pair(pred, gt)
    fg_boundary = boundary_map(pred_b)
    gt_boundary = boundary_map(gt_b)
    n_fg = int(np.count_nonzero(fg_boundary))
    n_gt = int(np.count_nonzero(gt_boundary))

    # The empty cases are decided before any dilation: they do not depend on it.
    if n_fg == 0 and n_gt == 0:
        precision, recall = 1.0, 1.0
    elif n_fg == 0:
        precision, recall = 1.0, 0.0
    elif n_gt == 0:
        precision, recall = 0.0, 1.0
    else:
        kernel = disk(boundary_tolerance(gt_b.shape, bound_th))
        # cv2.dilate pads with the dilation-neutral value, so the image border adds nothing.
        fg_dil = cv2.dilate(fg_boundary.view(np.uint8), kernel).view(bool)
        gt_dil = cv2.dilate(gt_boundary.view(np.uint8), kernel).view(bool)
        precision = np.count_nonzero(fg_boundary & gt_dil) / n_fg
        recall = np.count_nonzero(gt_boundary & fg_dil) / n_gt

    if precision + recall == 0:
        return 0.0
    return float(2.0 * precision * recall / (precision + recall))


def object_statistics(values: np.ndarray) -> tuple[float, float, float]:
    """Mean, recall and decay of one object's per-frame scores (official ``db_statistics``).

    Args:
        values: (T,) per-frame J or F of one object (first and last frame already removed).

    Returns:
        (mean, recall, decay): recall is the fraction of frames scoring above 0.5; decay is
        the mean of the first quarter minus the mean of the last quarter. The quarters are
        the official ones: boundaries ``round(linspace(1, T, 5)) - 1`` and bin i spanning
        ``values[ids[i] : ids[i+1] + 1]``, so consecutive bins share their edge frame (not
        ``np.array_split``). NaNs are ignored, as the official ``nanmean``.
    """
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if v.size == 0:
        raise ValueError("object_statistics needs at least one frame")
    mean = float(np.nanmean(v)) if not np.all(np.isnan(v)) else math.nan
    # NaN > 0.5 is False, and nanmean of a bool array is a plain mean: as the official code.
    recall = float(np.mean(v > 0.5))
    # The 1e-10 makes exact halves round up despite numpy's round-half-to-even.
    ids = (np.round(np.linspace(1, v.size, 5) + 1e-10) - 1).astype(np.int64)
    first = v[ids[0] : ids[1] + 1]
    last = v[ids[3] : ids[4] + 1]

    def _nanmean(a: np.ndarray) -> float:
        return math.nan if a.size == 0 or np.all(np.isnan(a)) else float(np.nanmean(a))

    decay = _nanmean(first) - _nanmean(last)
    return mean, recall, decay


def evaluate_sequence(
    gt_masks: np.ndarray,
    pred_masks: np.ndarray,
    object_ids: list[int] | None = None,
    bound_th: float = 0.008,
) -> dict[int, dict[str, np.ndarray]]:
    """Per-frame J and F of every object of one sequence (semi-supervised protocol).

    The first frame (given as reference) and the last frame are excluded, as the official
    evaluation does. Object k is the pixels equal to k in both arrays. An object the
    prediction never labels is scored against an empty prediction, so it gets 0 wherever
    the truth holds it (and 1 in frames where both are empty, as the official zero padding).
    Prediction ids that are not evaluated objects are ignored.

    Args:
        gt_masks: (T, H, W) integer ground-truth ids (0 background); T >= 3.
        pred_masks: (T, H, W) integer predicted ids, same shape.
        object_ids: objects to score; None takes the non-zero ids of ``gt_masks[0]``
            (the void label 255 excluded), ascending.
        bound_th: boundary tolerance, see ``boundary_measure``.

    Returns:
        ``{object_id: {"J": (T-2,) float64, "F": (T-2,) float64}}``, frames 1 .. T-2 in order.
    """
    gt = np.asarray(gt_masks)
    pred = np.asarray(pred_masks)
    if gt.ndim != 3:
        raise ValueError(f"gt_masks must be (T, H, W), got shape {gt.shape}")
    if gt.shape != pred.shape:
        raise ValueError(f"gt_masks {gt.shape} and pred_masks {pred.shape} shapes differ")
    if gt.shape[0] < 3:
        raise ValueError(f"need at least 3 frames (first and last are excluded), got {gt.shape[0]}")

    if object_ids is None:
        first = np.unique(gt[0])
        object_ids = [int(k) for k in first if k != 0 and k != VOID_ID]

    frames = range(1, gt.shape[0] - 1)
    out: dict[int, dict[str, np.ndarray]] = {}
    for obj in object_ids:
        j = np.empty(len(frames), dtype=np.float64)
        f = np.empty(len(frames), dtype=np.float64)
        for i, t in enumerate(frames):
            g = gt[t] == obj
            p = pred[t] == obj
            j[i] = region_similarity(p, g)
            f[i] = boundary_measure(p, g, bound_th)
        out[int(obj)] = {"J": j, "F": f}
    return out

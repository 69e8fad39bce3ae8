"""DAVIS metrics (eamstcn.evaluation.metrics) and the folder evaluator (davis_eval)."""

from __future__ import annotations

import csv
import math
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from eamstcn.evaluation.davis_eval import SUMMARY_KEYS, evaluate_predictions
from eamstcn.evaluation.metrics import (
    boundary_map,
    boundary_measure,
    boundary_tolerance,
    disk,
    evaluate_sequence,
    object_statistics,
    region_similarity,
)


# --------------------------------------------------------------------------------------
# Oracle: a transcription of the official DAVIS-2017 algorithm
# (davisvideochallenge/davis2017-evaluation, davis2017/metrics.py and utils.py), kept
# as close to the original as numpy 2 allows (np.bool -> bool), used only to check ours.
# --------------------------------------------------------------------------------------


def _official_iou(annotation, segmentation):
    annotation = annotation.astype(bool)
    segmentation = segmentation.astype(bool)
    void_pixels = np.zeros_like(segmentation)
    inters = np.sum((segmentation & annotation) & np.logical_not(void_pixels), axis=(-2, -1))
    union = np.sum((segmentation | annotation) & np.logical_not(void_pixels), axis=(-2, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        j = inters / union
    return 1 if np.isclose(union, 0) else j


def _official_seg2bmap(seg):
    # Only the same-size path (width/height None), the one DAVIS uses.
    seg = seg.astype(bool)
    seg[seg > 0] = 1
    e = np.zeros_like(seg)
    s = np.zeros_like(seg)
    se = np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]
    b = seg ^ e | seg ^ s | seg ^ se
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = 0
    return b


def _official_f_measure(foreground_mask, gt_mask, bound_th=0.008):
    from skimage.morphology import disk as sk_disk

    void_pixels = np.zeros_like(foreground_mask).astype(bool)
    bound_pix = bound_th if bound_th >= 1 else np.ceil(bound_th * np.linalg.norm(foreground_mask.shape))
    fg_boundary = _official_seg2bmap(foreground_mask * np.logical_not(void_pixels))
    gt_boundary = _official_seg2bmap(gt_mask * np.logical_not(void_pixels))
    fg_dil = cv2.dilate(fg_boundary.astype(np.uint8), sk_disk(bound_pix).astype(np.uint8))
    gt_dil = cv2.dilate(gt_boundary.astype(np.uint8), sk_disk(bound_pix).astype(np.uint8))
    gt_match = gt_boundary * fg_dil
    fg_match = fg_boundary * gt_dil
    n_fg = np.sum(fg_boundary)
    n_gt = np.sum(gt_boundary)
    if n_fg == 0 and n_gt > 0:
        precision, recall = 1, 0
    elif n_fg > 0 and n_gt == 0:
        precision, recall = 0, 1
    elif n_fg == 0 and n_gt == 0:
        precision, recall = 1, 1
    else:
        precision = np.sum(fg_match) / float(n_fg)
        recall = np.sum(gt_match) / float(n_gt)
    if precision + recall == 0:
        return 0
    return 2 * precision * recall / (precision + recall)


def _official_db_statistics(per_frame_values):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        M = np.nanmean(per_frame_values)
        O = np.nanmean(per_frame_values > 0.5)
    N_bins = 4
    ids = np.round(np.linspace(1, len(per_frame_values), N_bins + 1) + 1e-10) - 1
    ids = ids.astype(np.uint8)
    D_bins = [per_frame_values[ids[i] : ids[i + 1] + 1] for i in range(0, 4)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        D = np.nanmean(D_bins[0]) - np.nanmean(D_bins[3])
    return M, O, D


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def _square(h: int, w: int, top: int, left: int, size: int) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    m[top : top + size, left : left + size] = True
    return m


def _random_blobs(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A bool (H, W) mask of 1-4 random filled ellipses, some crossing the image border."""
    m = np.zeros((h, w), dtype=np.uint8)
    for _ in range(int(rng.integers(1, 5))):
        center = (int(rng.integers(-w // 8, w + w // 8)), int(rng.integers(-h // 8, h + h // 8)))
        axes = (int(rng.integers(2, max(3, w // 3))), int(rng.integers(2, max(3, h // 3))))
        cv2.ellipse(m, center, axes, float(rng.uniform(0, 180)), 0, 360, 1, thickness=-1)
    return m.astype(bool)


def _perturb(rng: np.random.Generator, mask: np.ndarray) -> np.ndarray:
    """A prediction-like variant of ``mask``: shifted, eroded or dilated, plus noise blobs."""
    m = mask.astype(np.uint8)
    dy, dx = (int(v) for v in rng.integers(-6, 7, size=2))
    m = np.roll(m, (dy, dx), axis=(0, 1))
    k = np.ones((3, 3), np.uint8)
    op = int(rng.integers(0, 3))
    if op == 1:
        m = cv2.erode(m, k, iterations=int(rng.integers(1, 4)))
    elif op == 2:
        m = cv2.dilate(m, k, iterations=int(rng.integers(1, 4)))
    h, w = m.shape
    for _ in range(int(rng.integers(0, 3))):
        cv2.circle(m, (int(rng.integers(0, w)), int(rng.integers(0, h))), int(rng.integers(1, 6)), 1, -1)
    return m.astype(bool)


# --------------------------------------------------------------------------------------
# Frame metrics
# --------------------------------------------------------------------------------------


def test_identical_masks_score_one():
    m = _square(64, 80, 10, 20, 25)
    assert region_similarity(m, m) == 1.0
    assert boundary_measure(m, m) == 1.0


def test_disjoint_masks_score_zero():
    a = _square(100, 100, 5, 5, 20)
    b = _square(100, 100, 60, 60, 20)  # boundaries ~55 px apart, far beyond r = 2
    assert region_similarity(a, b) == 0.0
    assert boundary_measure(a, b) == 0.0


def test_empty_cases():
    empty = np.zeros((50, 60), dtype=bool)
    full = np.ones((50, 60), dtype=bool)
    sq = _square(50, 60, 10, 10, 10)
    # Nothing to find and nothing found is perfect.
    assert region_similarity(empty, empty) == 1.0
    assert boundary_measure(empty, empty) == 1.0
    # Empty prediction: J = 0; P = 1, R = 0 -> F = 0. Empty truth: P = 0, R = 1 -> F = 0.
    assert region_similarity(empty, sq) == 0.0
    assert boundary_measure(empty, sq) == 0.0
    assert region_similarity(sq, empty) == 0.0
    assert boundary_measure(sq, empty) == 0.0
    # A full mask has no boundary (the image border is not a boundary): both boundaries
    # are empty, so F = 1 even though J is only partial.
    assert boundary_map(full).sum() == 0
    assert boundary_measure(full, full) == 1.0
    assert region_similarity(full, full) == 1.0


def test_boundary_map_of_square_is_offset_outline():
    # A square over rows a..b, cols c..d (inclusive) has as boundary the outline of the
    # rectangle rows a-1..b, cols c-1..d: its own bottom row and right column (neighbours
    # below / right are outside) plus the row above and the column left of it (their
    # lower / right / lower-right neighbours are inside). 20x20 square -> 21x21 outline,
    # 4 * 21 - 4 = 80 pixels.
    m = _square(40, 40, 10, 12, 20)  # rows 10..29, cols 12..31
    b = boundary_map(m)
    expected = np.zeros_like(b)
    expected[9:30, 11:32] = True
    expected[10:29, 12:31] = False
    np.testing.assert_array_equal(b, expected)
    assert b.sum() == 80
    # Edge rules: last row compares with the right neighbour only, last column with the
    # lower one only, and the bottom-right corner never counts.
    m2 = np.zeros((4, 4), dtype=bool)
    m2[3, 2] = True  # last row
    b2 = boundary_map(m2)
    assert b2[3, 1] and b2[3, 2] and not b2[3, 3]
    m3 = np.zeros((4, 4), dtype=bool)
    m3[3, 3] = True  # bottom-right corner alone
    b3 = boundary_map(m3)
    assert not b3[3, 3] and b3[2, 3] and b3[3, 2] and b3[2, 2]


def test_shifted_square_known_scores():
    # gt: 20x20 square at rows 40..59, cols 40..59 of a 100x100 image; pred: the same
    # shifted right by 3. By test_boundary_map_of_square_is_offset_outline both boundaries
    # are 80-pixel outlines of 21x21 squares: gt at rows 39..59, cols 39..59 and pred at
    # rows 39..59, cols 42..62. In outline coordinates (0..20), pred's outline is gt's moved
    # by 3 columns.
    #
    # Tolerance r = 1 (bound_th=1): a pred boundary pixel matches if a gt boundary pixel is
    # within Euclidean distance 1.
    #   top row, cols 3..23: cols 3..20 lie on gt's top row, col 21 is 1 from (0, 20),
    #     cols 22, 23 are >= 2 away -> 19 matched; bottom row likewise 19;
    #   left column (col 3, rows 1..19): gt's verticals are at cols 0 and 20 (3 and 17
    #     away); only rows 1 and 19 are within 1 of gt's top / bottom rows -> 2;
    #   right column (col 23, rows 1..19): 3 from gt's col 20 -> 0.
    #   precision = (19 + 19 + 2 + 0) / 80 = 0.5, and recall is the mirror image = 0.5,
    #   so F = 0.5.
    # Default bound_th=0.008 at 100x100: r = ceil(0.008 * 141.42) = ceil(1.13) = 2.
    #   top/bottom rows: cols 3..22 match (col 22 is 2 from (0, 20)), col 23 does not
    #     (3 from (0, 20), sqrt(10) from (1, 20)) -> 20 each;
    #   left column: rows 1, 2 and 18, 19 are within 2 of gt's top / bottom rows -> 4;
    #   right column: 3 from gt's col 20 -> 0.
    #   P = R = (20 + 20 + 4) / 80 = 0.55 -> F = 0.55.
    # J: intersection 20 x 17 = 340, union 400 + 400 - 340 = 460 -> 17/23.
    gt = _square(100, 100, 40, 40, 20)
    pred = _square(100, 100, 40, 43, 20)
    assert boundary_tolerance(gt.shape) == 2
    assert boundary_measure(pred, gt, bound_th=1) == pytest.approx(0.5, abs=1e-12)
    assert boundary_measure(pred, gt) == pytest.approx(0.55, abs=1e-12)
    assert region_similarity(pred, gt) == pytest.approx(17 / 23, abs=1e-12)


def test_tolerance_and_disk():
    assert boundary_tolerance((480, 854)) == 8  # docs/EVALUATION.md: 8 px at 480p
    assert boundary_tolerance((480, 854), bound_th=3) == 3
    d = disk(2)
    expected = np.array(
        [[0, 0, 1, 0, 0],
         [0, 1, 1, 1, 0],
         [1, 1, 1, 1, 1],
         [0, 1, 1, 1, 0],
         [0, 0, 1, 0, 0]], dtype=np.uint8)
    np.testing.assert_array_equal(d, expected)


def test_disk_matches_skimage():
    morph = pytest.importorskip("skimage.morphology")
    for r in (1, 2, 3, 5, 8, 8.0, 13, 2.5):
        np.testing.assert_array_equal(disk(r), morph.disk(r).astype(np.uint8), err_msg=f"r={r}")


def test_shape_mismatch_raises():
    with pytest.raises(ValueError):
        region_similarity(np.zeros((4, 4), bool), np.zeros((4, 5), bool))
    with pytest.raises(ValueError):
        boundary_measure(np.zeros((4, 4), bool), np.zeros((5, 4), bool))


@pytest.mark.parametrize("shape,n", [((96, 160), 12), ((480, 854), 4)])
def test_matches_official_algorithm(shape, n):
    pytest.importorskip("skimage")
    rng = np.random.default_rng(1234 + shape[0])
    h, w = shape
    for _ in range(n):
        gt = _random_blobs(rng, h, w)
        pred = _perturb(rng, gt) if rng.random() < 0.8 else _random_blobs(rng, h, w)
        assert region_similarity(pred, gt) == pytest.approx(float(_official_iou(gt, pred)), abs=1e-3)
        # Argument order as the official db_eval_boundary: f_measure(segmentation, annotation).
        assert boundary_measure(pred, gt) == pytest.approx(float(_official_f_measure(pred, gt)), abs=1e-3)
        np.testing.assert_array_equal(boundary_map(gt), _official_seg2bmap(gt))
    # Uint8 id-style inputs (non-zero is foreground) behave the same.
    gt8 = _random_blobs(rng, h, w).astype(np.uint8) * 3
    pred8 = _perturb(rng, gt8 > 0).astype(np.uint8) * 7
    assert boundary_measure(pred8, gt8) == pytest.approx(float(_official_f_measure(pred8, gt8)), abs=1e-3)


# --------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------


def test_object_statistics_matches_official():
    rng = np.random.default_rng(0)
    for t in list(range(1, 30)) + [67, 100, 101, 255]:
        v = rng.random(t)
        ours = object_statistics(v)
        ref = _official_db_statistics(v)
        np.testing.assert_allclose(ours, ref, atol=1e-12, err_msg=f"T={t}")


def test_object_statistics_hand_example():
    # T = 8: boundaries round(linspace(1, 8, 5)) - 1 = round(1, 2.75, 4.5, 6.25, 8) - 1
    # = (1, 3, 5, 6, 8) - 1 = (0, 2, 4, 5, 7); bin 0 = v[0:3], bin 3 = v[5:8].
    v = np.array([1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3])
    mean, recall, decay = object_statistics(v)
    assert mean == pytest.approx(0.65)
    assert recall == pytest.approx(5 / 8)  # 0.5 itself is not above 0.5
    assert decay == pytest.approx(0.9 - 0.4)
    with pytest.raises(ValueError):
        object_statistics(np.array([]))


# --------------------------------------------------------------------------------------
# Sequences
# --------------------------------------------------------------------------------------


def _two_object_sequence(t: int = 6, h: int = 48, w: int = 64) -> np.ndarray:
    gt = np.zeros((t, h, w), dtype=np.uint8)
    for i in range(t):
        gt[i, 5:20, 5 + i : 20 + i] = 1
        gt[i, 28:44, 30:50] = 2
    return gt


def test_evaluate_sequence_excludes_first_and_last_frames():
    gt = _two_object_sequence()
    pred = gt.copy()
    # Garbage in the first and last frame must not count.
    pred[0] = 0
    pred[-1] = 2
    res = evaluate_sequence(gt, pred)
    assert sorted(res) == [1, 2]
    for obj in (1, 2):
        assert res[obj]["J"].shape == (gt.shape[0] - 2,)
        np.testing.assert_array_equal(res[obj]["J"], 1.0)
        np.testing.assert_array_equal(res[obj]["F"], 1.0)
    # A bad middle frame does count, at its position (frame 2 -> index 1).
    pred[2][pred[2] == 1] = 0
    res = evaluate_sequence(gt, pred)
    assert res[1]["J"][1] == 0.0 and res[1]["F"][1] == 0.0
    assert np.all(np.delete(res[1]["J"], 1) == 1.0)


def test_evaluate_sequence_missing_object_scores_zero():
    gt = _two_object_sequence()
    pred = gt.copy()
    pred[pred == 2] = 0  # object 2 never predicted
    pred[1, 0:3, 0:3] = 9  # an id that is not an object is ignored
    res = evaluate_sequence(gt, pred)
    np.testing.assert_array_equal(res[2]["J"], 0.0)
    np.testing.assert_array_equal(res[2]["F"], 0.0)
    assert object_statistics(res[2]["J"]) == (0.0, 0.0, 0.0)
    np.testing.assert_array_equal(res[1]["J"], 1.0)
    # Explicit object ids, including one absent from both: empty vs empty is perfect.
    res = evaluate_sequence(gt, pred, object_ids=[2, 5])
    assert list(res) == [2, 5]
    np.testing.assert_array_equal(res[5]["J"], 1.0)


def test_evaluate_sequence_rejects_bad_input():
    gt = _two_object_sequence()
    with pytest.raises(ValueError):
        evaluate_sequence(gt, gt[:, :, :-1])
    with pytest.raises(ValueError):
        evaluate_sequence(gt[:2], gt[:2])


# --------------------------------------------------------------------------------------
# Folder evaluation
# --------------------------------------------------------------------------------------


def _davis_palette() -> list[int]:
    # First entries of the DAVIS palette (black, red, green, ...); the rest is grey ramp.
    pal = [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0, 0, 0, 128]
    pal += [i for i in range(5, 256) for _ in range(3)]
    return pal


def _save_palette(path: Path, ids: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(ids.astype(np.uint8))
    img.putpalette(_davis_palette())  # turns the L image into a P image with the same indices
    assert img.mode == "P"
    img.save(path)


def _save_gray(path: Path, mask: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8)).save(path)


def test_evaluate_predictions_and_csv(tmp_path):
    gt_root = tmp_path / "DAVIS"
    pred_root = tmp_path / "pred"
    ann = gt_root / "Annotations" / "480p"

    # DAVIS-2016 style: one object, grey 0/255 masks.
    t16, h, w = 5, 40, 56
    gt16 = np.zeros((t16, h, w), dtype=np.uint8)
    for i in range(t16):
        gt16[i, 10:30, 10 + 2 * i : 30 + 2 * i] = 1
    pred16 = gt16.copy()
    pred16[2] = np.roll(gt16[2], 3, axis=1)  # one imperfect scored frame
    for i in range(t16):
        _save_gray(ann / "cow" / f"{i:05d}.png", gt16[i] * 255)
        if 0 < i < t16 - 1:  # first / last predictions are optional
            _save_palette(pred_root / "cow" / f"{i:05d}.png", pred16[i])

    # DAVIS-2017 style: palette ids, two objects, a void (255) patch in the truth.
    gt17 = _two_object_sequence(t=6, h=h, w=w)
    gt17_files = gt17.copy()
    gt17_files[:, 0:2, 0:2] = 255
    pred17 = gt17.copy()
    pred17[pred17 == 2] = 0  # object 2 lost
    for i in range(gt17.shape[0]):
        _save_palette(ann / "dogs" / f"{i:05d}.png", gt17_files[i])
        _save_palette(pred_root / "dogs" / f"{i:05d}.png", pred17[i])

    result = evaluate_predictions(gt_root, pred_root)
    rows = result.per_sequence_rows()
    assert [(r["Sequence"], r["Object"]) for r in rows] == [("cow", 1), ("dogs", 1), ("dogs", 2)]

    # Expected values straight from the metrics on the arrays.
    exp16 = evaluate_sequence(gt16, pred16)[1]
    exp17 = evaluate_sequence(gt17, pred17)
    per_obj = [exp16, exp17[1], exp17[2]]
    stats_j = [object_statistics(o["J"]) for o in per_obj]
    stats_f = [object_statistics(o["F"]) for o in per_obj]
    for row, sj, sf in zip(rows, stats_j, stats_f):
        assert (row["J-Mean"], row["J-Recall"], row["J-Decay"]) == pytest.approx(sj)
        assert (row["F-Mean"], row["F-Recall"], row["F-Decay"]) == pytest.approx(sf)
    assert rows[0]["J-Mean"] < 1.0
    assert rows[1]["J-Mean"] == 1.0 and rows[2]["J-Mean"] == 0.0

    summary = result.summary()
    assert tuple(summary) == SUMMARY_KEYS
    j_mean = np.mean([s[0] for s in stats_j])
    f_mean = np.mean([s[0] for s in stats_f])
    assert summary["J-Mean"] == pytest.approx(j_mean)
    assert summary["F-Mean"] == pytest.approx(f_mean)
    assert summary["J&F-Mean"] == pytest.approx((j_mean + f_mean) / 2)
    assert summary["J-Decay"] == pytest.approx(np.mean([s[2] for s in stats_j]))

    # Explicit sequence list.
    only = evaluate_predictions(gt_root, pred_root, sequences=["dogs"])
    assert [r["Object"] for r in only.per_sequence_rows()] == [1, 2]

    out = tmp_path / "results"
    g_path, s_path = result.write_csv(out)
    assert sorted(p.name for p in out.iterdir()) == ["global_results.csv", "per-sequence_results.csv"]
    with open(g_path, newline="") as fh:
        g_rows = list(csv.reader(fh))
    assert g_rows[0] == list(SUMMARY_KEYS)
    assert float(g_rows[1][0]) == pytest.approx(summary["J&F-Mean"], abs=5e-4)
    with open(s_path, newline="") as fh:
        s_rows = list(csv.DictReader(fh))
    assert [r["Sequence"] for r in s_rows] == ["cow_1", "dogs_1", "dogs_2"]
    assert float(s_rows[2]["J-Mean"]) == 0.0
    assert float(s_rows[0]["F-Mean"]) == pytest.approx(rows[0]["F-Mean"], abs=5e-4)
    # Rewriting replaces the files in place.
    result.write_csv(out)
    assert len(list(out.iterdir())) == 2


def test_evaluate_predictions_missing_middle_frame(tmp_path):
    ann = tmp_path / "DAVIS" / "Annotations" / "480p" / "s"
    m = np.zeros((16, 16), dtype=np.uint8)
    m[4:10, 4:10] = 1
    for i in range(4):
        _save_palette(ann / f"{i:05d}.png", m)
    _save_palette(tmp_path / "pred" / "s" / "00001.png", m)  # 00002 missing
    with pytest.raises(FileNotFoundError):
        evaluate_predictions(tmp_path / "DAVIS", tmp_path / "pred")
    empty = evaluate_predictions(tmp_path / "DAVIS", tmp_path / "pred", sequences=[])
    assert math.isnan(empty.summary()["J-Mean"])

"""Evaluate a folder of predicted masks against DAVIS ground truth (semi-supervised).

Layout, as the official DAVIS-2017 evaluation reads it (docs/EVALUATION.md):

    gt_root/Annotations/<resolution>/<seq>/00000.png ...   ground truth
    pred_root/<seq>/00000.png ...                          predictions (indexed PNG ids)

Masks are read with ``eamstcn.data.davis_io.read_mask``: palette indices are object ids,
and a DAVIS-2016 0/255 mask is object 1. The DAVIS void label 255 is never an object (the
official code turns it into background, which scores the same). Frames are the
ground-truth file names; the first and last are excluded, so prediction files for those
two may be missing. Scores are averaged over all objects of all sequences,
like the official code (a sequence with three objects weighs three times one with one).
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from eamstcn.data.davis_io import read_mask
from eamstcn.evaluation.metrics import evaluate_sequence, object_statistics
from eamstcn.fileio import atomic_target

__all__ = ["EvalResult", "ObjectResult", "evaluate_predictions", "SUMMARY_KEYS", "ROW_KEYS"]

#: Column names of the global table, as the official ``global_results.csv``.
SUMMARY_KEYS = ("J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay")
#: Keys of one per-object row (``EvalResult.per_sequence_rows``).
ROW_KEYS = ("Sequence", "Object", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay")


@dataclass(frozen=True)
class ObjectResult:
    """Scores of one object of one sequence; ``j`` and ``f`` are (T-2,) per-frame values."""

    sequence: str
    object: int
    j_mean: float
    j_recall: float
    j_decay: float
    f_mean: float
    f_recall: float
    f_decay: float
    j: np.ndarray = field(repr=False, compare=False)
    f: np.ndarray = field(repr=False, compare=False)

    def row(self) -> dict[str, str | int | float]:
        return dict(
            zip(
                ROW_KEYS,
                (self.sequence, self.object, self.j_mean, self.j_recall, self.j_decay,
                 self.f_mean, self.f_recall, self.f_decay),
            )
        )


@dataclass
class EvalResult:
    """Per-object results of an evaluation, in sequence then object order."""

    objects: list[ObjectResult]

    def per_sequence_rows(self) -> list[dict[str, str | int | float]]:
        """One dict per object with keys ``ROW_KEYS`` (values are fractions in [0, 1])."""
        return [o.row() for o in self.objects]

    def summary(self) -> dict[str, float]:
        """Dataset scores with keys ``SUMMARY_KEYS``, each the mean over all objects of all
        sequences; ``J&F-Mean`` = (J-Mean + F-Mean) / 2. NaN when there are no objects."""
        if not self.objects:
            return {k: math.nan for k in SUMMARY_KEYS}

        def avg(attr: str) -> float:
            return float(np.mean([getattr(o, attr) for o in self.objects]))

        j_mean, f_mean = avg("j_mean"), avg("f_mean")
        values = (
            (j_mean + f_mean) / 2.0, j_mean, avg("j_recall"), avg("j_decay"),
            f_mean, avg("f_recall"), avg("f_decay"),
        )
        return dict(zip(SUMMARY_KEYS, values))

    def write_csv(self, out_dir: str | os.PathLike[str], float_format: str = "%.3f") -> tuple[Path, Path]:
        """Write ``global_results.csv`` and ``per-sequence_results.csv`` into ``out_dir``.

        The global table has the official columns. The per-sequence table starts with the
        official ``Sequence`` (``<seq>_<object>``), ``J-Mean``, ``F-Mean`` columns so tools
        that read the official file still work, then adds ``Object`` and the recall/decay
        columns. Each file is written to a temporary file and renamed, so a reader never
        sees half a table.

        Returns:
            (global_path, per_sequence_path).
        """
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)

        def fmt(v: float) -> str:
            return float_format % v

        summary = self.summary()
        global_rows = [list(SUMMARY_KEYS), [fmt(summary[k]) for k in SUMMARY_KEYS]]
        seq_header = ["Sequence", "J-Mean", "F-Mean", "Object", "J-Recall", "J-Decay", "F-Recall", "F-Decay"]
        seq_rows: list[list[str]] = [seq_header]
        for o in self.objects:
            seq_rows.append([
                f"{o.sequence}_{o.object}", fmt(o.j_mean), fmt(o.f_mean), str(o.object),
                fmt(o.j_recall), fmt(o.j_decay), fmt(o.f_recall), fmt(o.f_decay),
            ])
        global_path = out / "global_results.csv"
        seq_path = out / "per-sequence_results.csv"
        _write_rows_atomic(global_path, global_rows)
        _write_rows_atomic(seq_path, seq_rows)
        return global_path, seq_path


def _write_rows_atomic(path: Path, rows: list[list[str]]) -> None:
    with atomic_target(path) as tmp, open(tmp, "x", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows(rows)


def _load_sequence(gt_dir: Path, pred_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """(T, H, W) uint8 ground truth and prediction of one sequence.

    Frames follow the ground-truth file names. The prediction of the first and last
    frame is not scored, so a missing one is replaced by zeros.
    """
    gt_files = sorted(gt_dir.glob("*.png"))
    if not gt_files:
        raise FileNotFoundError(f"no ground-truth PNGs in {gt_dir}")
    gt = np.stack([read_mask(p) for p in gt_files])
    pred = np.zeros_like(gt)
    for t, gt_file in enumerate(gt_files):
        pred_file = pred_dir / gt_file.name
        if not pred_file.exists():
            if t == 0 or t == len(gt_files) - 1:
                continue
            raise FileNotFoundError(f"missing prediction {pred_file}")
        p = read_mask(pred_file)
        if p.shape != gt.shape[1:]:
            raise ValueError(f"{pred_file}: size {p.shape} differs from the ground truth {gt.shape[1:]}")
        pred[t] = p
    return gt, pred


def evaluate_predictions(
    gt_root: str | os.PathLike[str],
    pred_root: str | os.PathLike[str],
    sequences: list[str] | None = None,
    resolution: str = "480p",
) -> EvalResult:
    """Score predicted masks against DAVIS ground truth.

    Args:
        gt_root: DAVIS root holding ``Annotations/<resolution>/<seq>/%05d.png``
            (DAVIS-2016 0/255 masks: object 1; DAVIS-2017 palette ids).
        pred_root: folder holding ``<seq>/%05d.png`` indexed-PNG predictions.
        sequences: sequences to score; None scores every sequence folder in ``pred_root``.
        resolution: annotation resolution folder.

    Returns:
        EvalResult with one row per object; objects are the non-zero ids of each
        sequence's first ground-truth frame.
    """
    gt_base = Path(gt_root) / "Annotations" / resolution
    pred_base = Path(pred_root)
    if not gt_base.is_dir():
        raise FileNotFoundError(f"ground truth folder not found: {gt_base}")
    if sequences is None:
        if not pred_base.is_dir():
            raise FileNotFoundError(f"prediction folder not found: {pred_base}")
        sequences = sorted(p.name for p in pred_base.iterdir() if p.is_dir())

    objects: list[ObjectResult] = []
    for seq in sequences:
        gt, pred = _load_sequence(gt_base / seq, pred_base / seq)
        per_object = evaluate_sequence(gt, pred)
        for obj, scores in per_object.items():
            jm, jr, jd = object_statistics(scores["J"])
            fm, fr, fd = object_statistics(scores["F"])
            objects.append(ObjectResult(seq, obj, jm, jr, jd, fm, fr, fd, j=scores["J"], f=scores["F"]))
    return EvalResult(objects)

"""The copy-the-first-mask baseline that the docs compare the bundled model with."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from eamstcn.data.davis_io import write_indexed_png
from eamstcn.evaluation.copy_first import copy_first_mask

DAVIS = Path(__file__).resolve().parents[2] / "shared" / "data" / "davis2016"


def test_still_object_scores_100_and_a_moved_one_less(tmp_path: Path) -> None:
    still = np.zeros((32, 48), np.uint8)
    still[8:20, 10:30] = 1
    for t in range(5):
        write_indexed_png(tmp_path / "Annotations" / "480p" / "still" / f"{t:05d}.png", still)
        moved = np.zeros_like(still)
        moved[8:20, 10 + 3 * t:30 + 3 * t] = 1
        write_indexed_png(tmp_path / "Annotations" / "480p" / "moved" / f"{t:05d}.png", moved)
    scores = {o.sequence: o.j_mean for o in copy_first_mask(tmp_path).objects}
    assert scores["still"] == pytest.approx(1.0) and scores["moved"] < 0.8


@pytest.mark.skipif(not DAVIS.is_dir(), reason="../shared/data/davis2016 not present")
def test_held_out_five_baseline_matches_the_docs() -> None:
    result = copy_first_mask(DAVIS, ["dog-agility", "hockey", "motorbike", "scooter-gray", "swing"])
    assert 100 * result.summary()["J&F-Mean"] == pytest.approx(20.6, abs=0.05)

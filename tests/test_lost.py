"""Lost objects: said once after N empty frames, said again when back, recorded in stats.csv."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from eamstcn.runtime.lost import LostObjects
from eamstcn.runtime.sinks import OutputWriter


def labels(*ids: int) -> np.ndarray:
    frame = np.zeros((8, 8), np.uint8)
    for i, object_id in enumerate(ids):
        frame[i, 0] = object_id
    return frame


def test_lost_after_n_empty_frames_once_then_back() -> None:
    said: list[str] = []
    lost = LostObjects(after=3, notify=said.append)
    assert lost.update(0, labels(1, 2)) == ()
    results = [lost.update(t, labels(1)) for t in range(1, 6)]
    assert results == [(), (), (2,), (2,), (2,)]
    assert said == ["object 2 lost at frame 3: its mask has been empty for 3 frames "
                    "(re-mark it with --add-box FRAME:X,Y,W,H:2, or b in the window)"]
    assert lost.update(6, labels(1, 2)) == () and said[-1] == "object 2 is back at frame 6"
    assert lost.update(7, labels()) == ()  # one empty frame is not lost


def test_never_seen_is_never_lost() -> None:
    lost = LostObjects(after=1)
    assert lost.update(0, labels()) == () and lost.update(1, labels()) == ()


def test_stats_csv_records_lost_ids(tmp_path: Path) -> None:
    frame = np.zeros((8, 8, 3), np.uint8)
    with OutputWriter(tmp_path, video=False, masks=False, lost=LostObjects(after=2)) as writer:
        for t, ids in enumerate([(1, 2), (1,), (), ()]):
            writer.write(t, frame, labels(*ids))
    rows = list(csv.DictReader(open(tmp_path / "stats.csv")))
    assert [row["lost"] for row in rows] == ["", "", "2", "1 2"]


def test_a_restart_forgets_the_old_ids_from_its_frame_on() -> None:
    """r in the window starts a new stream whose ids start at 1 again: an old id 2 that
    the new stream does not have is not 'lost', and frames before the restart still count."""
    said: list[str] = []
    lost = LostObjects(after=2, notify=said.append)
    lost.restart(3)  # told by the loop before the writer's thread reaches frame 3
    assert [lost.update(t, labels(1, 2)) for t in range(2)] == [(), ()]
    assert lost.update(2, labels(1)) == ()  # 2 empty for 1 frame, before the restart
    assert [lost.update(t, labels(1)) for t in range(3, 8)] == [()] * 5  # 2 forgotten at frame 3
    assert said == []
    assert [lost.update(t, labels()) for t in (8, 9)] == [(), (1,)]  # the new stream's 1 still counts

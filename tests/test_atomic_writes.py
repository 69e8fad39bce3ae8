"""One atomic writer (eamstcn.fileio.atomic_target) behind every file the project writes
whole: normal permissions (not mkstemp's 0600), no torn file, no temporary left behind."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from eamstcn.checkpoint import atomic_torch_save
from eamstcn.data.davis_io import write_frame, write_indexed_png
from eamstcn.data.synth import write_video
from eamstcn.evaluation.davis_eval import EvalResult
from eamstcn.fileio import atomic_target, atomic_write_bytes


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_every_writer_leaves_a_normal_mode_and_no_temporary(tmp_path: Path, umask_022) -> None:
    frame = np.zeros((16, 16, 3), dtype=np.uint8)
    atomic_write_bytes(tmp_path / "a.json", b"{}")
    atomic_torch_save({"x": torch.zeros(2)}, tmp_path / "b.pth")
    write_indexed_png(tmp_path / "c.png", np.ones((16, 16), dtype=np.uint8))
    write_frame(tmp_path / "d.jpg", frame)
    write_video(tmp_path / "e.mp4", np.stack([frame, frame]), fps=4)
    EvalResult([]).write_csv(tmp_path / "eval")
    written = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    assert [p.name for p in written] == ["a.json", "b.pth", "c.png", "d.jpg", "e.mp4", "global_results.csv", "per-sequence_results.csv"]
    assert {p.name: _mode(p) for p in written} == {p.name: 0o644 for p in written}


def test_a_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "file.txt"
    atomic_write_bytes(target, b"old")
    with pytest.raises(RuntimeError), atomic_target(target) as temp:
        temp.write_bytes(b"half")
        raise RuntimeError("crash mid-write")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in target.parent.iterdir()) == ["file.txt"]

"""eamstcn-eval's edges (issue 20): --out checked before any sequence runs, a write that
fails is one line naming what was kept, --top-k bounded as in eamstcn-run, and the
resolution folder picked as eamstcn-train picks it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from eamstcn.data.synth import generate_dataset
from eamstcn.runtime.eval_cli import app
from tests.helpers.cli import assert_one_line_error


@pytest.fixture(scope="module")
def davis(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("d17")
    generate_dataset(root, sequences=2, frames=4, height=64, width=64, objects=1, seed=3)
    return root


def evaluate(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_out_that_is_a_file_is_refused_before_the_work(runtime_assets, davis: Path, tmp_path: Path, monkeypatch) -> None:
    import eamstcn.runtime.engines.factory as factory

    def never(*args, **kwargs):
        raise AssertionError("engines were opened before --out was checked")

    monkeypatch.setattr(factory, "open_engines", never)
    (tmp_path / "file").write_text("x")
    result = evaluate("--data", davis, "--engines", runtime_assets.engines, "--out", tmp_path / "file")
    assert_one_line_error(result, "is a file, not a folder")
    result = evaluate("--data", davis, "--engines", runtime_assets.engines, "--out", tmp_path / "file" / "sub")
    assert_one_line_error(result, "is a file, not a folder")
    result = evaluate("--data", davis, "--engines", runtime_assets.engines, "--out", tmp_path / ("x" * 300))
    assert_one_line_error(result, "300 bytes long")


def test_a_failed_write_is_one_line_and_keeps_what_was_written(runtime_assets, davis: Path, tmp_path: Path, monkeypatch) -> None:
    import errno

    import eamstcn.runtime.evaluate as run_eval

    real = run_eval.write_indexed_png
    calls = [0]

    def disk_fills(path, labels):
        calls[0] += 1
        if calls[0] > 5:  # the first sequence (4 frames) fits, the second does not
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, labels)

    monkeypatch.setattr(run_eval, "write_indexed_png", disk_fills)
    out = tmp_path / "out"
    result = evaluate("--data", davis, "--engines", runtime_assets.engines, "--out", out, "--device", "cpu")
    assert_one_line_error(result, "No space left on device")
    first = sorted(p.name for p in out.iterdir())[0]
    assert len(list((out / first).glob("*.png"))) == 4
    assert first in result.stderr  # the message names the sequences written in full
    assert not list(out.rglob("*.tmp"))


def test_top_k_above_the_memory_is_refused(runtime_assets, davis: Path, tmp_path: Path) -> None:
    result = evaluate("--data", davis, "--engines", runtime_assets.engines, "--out", tmp_path / "o",
                      "--top-k", "100000", "--device", "cpu")
    assert_one_line_error(result, "--top-k 100000 is more than the memory holds")
    assert not list((tmp_path / "o").rglob("*.png"))


def test_resolution_falls_back_to_the_only_folder(runtime_assets, davis: Path, tmp_path: Path) -> None:
    data = tmp_path / "d240"
    for side in ("JPEGImages", "Annotations"):
        shutil.copytree(davis / side / "480p", data / side / "240p")
    result = evaluate("--data", data, "--engines", runtime_assets.engines, "--out", tmp_path / "o", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "ALL" in result.stdout
    result = evaluate("--data", data, "--engines", runtime_assets.engines, "--out", tmp_path / "o", "--resolution", "1080p")
    assert result.exit_code == 2 and "Traceback" not in result.output

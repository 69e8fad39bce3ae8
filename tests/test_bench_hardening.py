"""eamstcn-bench's edges (issue 20): output files checked before minutes of measuring, a
failed write loses neither the table nor the other files, and --video/--mask are read
and checked before the export (a JPEG mask, another aspect ratio, a damaged video)."""

from __future__ import annotations

import errno
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import eamstcn.bench.runner as bench_runner
from eamstcn.bench.cli import app
from eamstcn.bench.results import BackendResult
from eamstcn.bench.runner import BenchReport
from tests.helpers.assets import write_mask
from tests.helpers.cli import assert_one_line_error


def bench(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture
def no_measuring(monkeypatch: pytest.MonkeyPatch) -> None:
    def never(*args, **kwargs):
        raise AssertionError("the bench started before its inputs and outputs were checked")

    monkeypatch.setattr(bench_runner, "run_bench", never)
    monkeypatch.setattr(bench_runner, "_prepare", never)


@pytest.mark.parametrize(("option", "path", "reason"), [
    ("--csv", "file/x.csv", "is a file, not a folder"),
    ("--json", "folder", "is a folder, not a file"),
    ("--plot", "file/plot.png", "is a file, not a folder"),
])
def test_output_files_are_checked_first(no_measuring, tmp_path: Path, option: str, path: str, reason: str) -> None:
    (tmp_path / "file").write_text("x")
    (tmp_path / "folder").mkdir()
    result = bench(option, tmp_path / path)
    assert_one_line_error(result, reason)


def test_a_failed_write_keeps_the_table_and_the_other_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import eamstcn.bench.cli as bench_cli

    report = BenchReport({"device": "cpu"}, [BackendResult.skipped("pytorch-fp32", "not here")])
    monkeypatch.setattr(bench_runner, "run_bench", lambda config, notify: report)

    def disk_full(path, results):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(bench_cli, "write_csv", disk_full)
    result = bench("--csv", tmp_path / "b.csv", "--json", tmp_path / "b.json")
    assert result.exit_code == 2 and "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "writing --csv" in errors[0] and "No space left on device" in errors[0]
    assert "wrote json" in result.stderr
    assert "pytorch-fp32" in result.stdout  # the table was printed
    assert (tmp_path / "b.json").is_file() and not (tmp_path / "b.csv").exists()


@pytest.fixture(scope="module")
def footage(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from eamstcn.data.synth import generate_sequence, write_video

    root = tmp_path_factory.mktemp("footage")
    clip = generate_sequence(seed=4, frames=4, height=64, width=96, objects=1)
    jpeg = root / "mask.jpg"
    Image.fromarray((clip.masks[0] > 0).astype(np.uint8) * 255).save(jpeg, quality=70)
    broken = root / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(2000))
    return {
        "video": write_video(root / "clip.mp4", clip.frames, fps=8),
        "mask": write_mask(root / "mask.png", clip.masks[0]),
        "square": write_mask(root / "square.png", np.ones((64, 64), np.uint8)),
        "jpeg": jpeg,
        "broken": broken,
    }


@pytest.mark.parametrize(("video", "mask", "reason"), [
    ("video", "square", "another aspect ratio"),
    ("video", "jpeg", "JPEG"),
    ("broken", "mask", "fewer than 2 readable frames"),
])
def test_footage_and_mask_are_checked_before_the_export(footage, monkeypatch: pytest.MonkeyPatch,
                                                         video: str, mask: str, reason: str) -> None:
    def never(*args, **kwargs):
        raise AssertionError("exported before the footage was checked")

    monkeypatch.setattr(bench_runner, "_prepare", never)
    result = bench("--video", footage[video], "--mask", footage[mask], "--device", "cpu")
    assert_one_line_error(result, reason)

"""Every console script turns a malformed or unknown option into one line and exit 2."""

from __future__ import annotations

import importlib

import pytest

ENTRY_POINTS = {
    "eamstcn-train": ("eamstcn.training.cli", ["phase2", "--data", ".", "--out", "o", "--crop", "abc"]),
    "eamstcn-eval": ("eamstcn.runtime.eval_cli", ["--data", ".", "--nope"]),
    "eamstcn-export": ("eamstcn.export.cli", ["--nope"]),
    "eamstcn-run": ("eamstcn.runtime.cli", ["--nope"]),
    "eamstcn-bench": ("eamstcn.bench.cli", ["--nope"]),
}


@pytest.mark.parametrize("prog", sorted(ENTRY_POINTS))
def test_usage_error_is_one_line(prog: str, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    module, args = ENTRY_POINTS[prog]
    monkeypatch.setattr("sys.argv", [prog, *args])
    with pytest.raises(SystemExit) as info:
        importlib.import_module(module).main()
    assert info.value.code == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and f"see {prog} --help" in lines[0], captured.err
    assert "Traceback" not in captured.err + captured.out


def test_help_exits_zero(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("sys.argv", ["eamstcn-train", "phase2", "--help"])
    with pytest.raises(SystemExit) as info:
        importlib.import_module("eamstcn.training.cli").main()
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "--crop" in out and "--dice-weight" in out


def test_command_errors_say_error_in_lower_case(tmp_path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """Errors the commands raise themselves (not usage errors) also start with ``error:``."""
    from typer.testing import CliRunner

    from eamstcn.bench.cli import app as bench_app
    from eamstcn.data.synth_cli import main as synth_main

    result = CliRunner().invoke(bench_app, ["--objects", "0"])
    assert result.exit_code == 2 and result.stderr.strip().splitlines() == ["error: --objects must be at least 1, got 0"]
    (tmp_path / "file").write_text("x")
    monkeypatch.setattr("sys.argv", ["eamstcn-synth", "--out", str(tmp_path / "file" / "sub"), "--frames", "2",
                                     "--sequences", "1", "--size", "64x64", "--no-progress"])
    with pytest.raises(SystemExit) as info:
        synth_main()
    assert info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot write the dataset"), lines


def test_train_out_is_checked_before_training(tmp_path) -> None:
    """A file given as --out was found at the first checkpoint, as a traceback (issue 20)."""
    from typer.testing import CliRunner

    from eamstcn.training.cli import app as train_app

    (tmp_path / "file").write_text("x")
    for out in (tmp_path / "file", tmp_path / "file" / "run"):
        result = CliRunner().invoke(train_app, ["phase2", "--data", str(tmp_path), "--out", str(out), "--preset", "tiny"])
        assert result.exit_code == 2 and "Traceback" not in result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: --out {out}") and "is a file" in lines[0], lines

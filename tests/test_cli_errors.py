"""Every console script turns a malformed or unknown option, and any other error the user
caused, into one ``error: ...`` line and exit 2 (README's exit-code table, "Edge boxes /
hardening")."""

from __future__ import annotations

import importlib

import pytest

ENTRY_POINTS = {
    "eamstcn-train": ("eamstcn.training.cli", ["phase2", "--data", ".", "--out", "o", "--crop", "abc"]),
    "eamstcn-eval": ("eamstcn.runtime.eval_cli", ["--data", ".", "--nope"]),
    "eamstcn-export": ("eamstcn.export.cli", ["--nope"]),
    "eamstcn-run": ("eamstcn.runtime.cli", ["--nope"]),
    "eamstcn-bench": ("eamstcn.bench.cli", ["--nope"]),
    "eamstcn-synth": ("eamstcn.data.synth_cli", ["--out", "o", "--size", "96"]),
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


#: A user error each command finds itself (not a usage error): module, arguments ({tmp}:
#: a folder holding a plain file named "file"), the start of the one line it prints.
USER_ERRORS = {
    "eamstcn-train": ("eamstcn.training.cli", ["phase2", "--data", "{tmp}/missing", "--out", "{tmp}/run"],
                      "error: data folder not found"),
    "eamstcn-eval": ("eamstcn.runtime.eval_cli", ["--data", "{tmp}/missing", "--checkpoint", "{tmp}/missing.pth"],
                     "error: not a DAVIS dataset"),
    "eamstcn-export": ("eamstcn.export.cli", ["--checkpoint", "{tmp}/missing.pth", "--out", "{tmp}/engines"],
                       "error: checkpoint not found"),
    "eamstcn-run": ("eamstcn.runtime.cli", ["--video", "{tmp}/missing.mp4", "--mask", "{tmp}/missing.png"],
                    "error: mask file not found"),
    "eamstcn-bench": ("eamstcn.bench.cli", ["--objects", "0"], "error: --objects must be at least 1, got 0"),
    "eamstcn-synth": ("eamstcn.data.synth_cli", ["--out", "{tmp}/file/sub", "--frames", "2", "--sequences", "1",
                                                 "--size", "64x64", "--no-progress"], "error: cannot write the dataset"),
}


@pytest.mark.parametrize("prog", sorted(USER_ERRORS))
def test_user_error_is_one_line_and_exit_2(prog: str, tmp_path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """Errors the commands raise themselves exit 2 as usage errors do, and also start with ``error:``."""
    module, args, start = USER_ERRORS[prog]
    (tmp_path / "file").write_text("x")
    monkeypatch.setattr("sys.argv", [prog, *(arg.format(tmp=tmp_path) for arg in args)])
    with pytest.raises(SystemExit) as info:
        importlib.import_module(module).main()
    assert info.value.code == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(start), captured.err
    assert "Traceback" not in captured.err + captured.out


def test_ctrl_c_exits_130(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C in a command that does not catch it itself (eamstcn-run does: 130, or 143
    after SIGTERM) exits 130 through run_app, without a traceback."""
    import typer

    from eamstcn.cli_errors import run_app

    app = typer.Typer()

    @app.command()
    def interrupted() -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("sys.argv", ["probe"])
    with pytest.raises(SystemExit) as info:
        run_app(app, "probe")
    assert info.value.code == 130


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

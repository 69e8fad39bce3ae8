"""Every console script turns a malformed or unknown option into one line and exit 2."""

from __future__ import annotations

import importlib

import pytest

ENTRY_POINTS = {
    "eamstcn-train": ("eamstcn.training.cli", ["phase2", "--data", ".", "--out", "o", "--crop", "abc"]),
    "eamstcn-eval": ("eamstcn.evaluation.cli", ["--data", ".", "--nope"]),
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

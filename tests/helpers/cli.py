"""Running a command in-process and checking its one-line errors."""

from __future__ import annotations

from typer.testing import CliRunner


def invoke(*args: object):
    """``eamstcn-run ARGS`` in-process (Typer's CliRunner); every argument passed through str."""
    from eamstcn.runtime.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def assert_one_line_error(result, contains: str, code: int = 2) -> None:
    """A user error: exit ``code``, one ``error: ...`` line on stderr holding ``contains``
    (notices and progress lines aside), no traceback."""
    assert result.exit_code == code, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith(("notice:", "progress:"))]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and contains in lines[0], lines[0]
    assert "Traceback" not in result.output

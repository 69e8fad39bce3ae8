"""One-line usage errors for every console script.

Typer prints a malformed or missing option as a boxed usage panel; our commands promise
one clear line and a non-zero exit for bad input. :func:`run_app` runs a Typer app with
Click's standalone mode off and turns its usage errors into ``error: ...`` lines.
"""

from __future__ import annotations

import sys

import click
import typer

from eamstcn import sizes

__all__ = ["run_app", "size_option"]


def _click_exceptions() -> tuple[tuple[type[Exception], ...], tuple[type[BaseException], ...]]:
    """(usage errors, aborts) of Click and of the copy of Click newer Typer versions vendor."""
    usage: list[type[Exception]] = [click.UsageError]
    abort: list[type[BaseException]] = [click.Abort]
    try:
        from typer._click import exceptions as vendored  # Typer >= 0.2x ships its own Click
    except ImportError:
        pass
    else:
        usage.append(vendored.UsageError)
        if hasattr(vendored, "Abort"):
            abort.append(vendored.Abort)
    return tuple(usage), tuple(abort)


def run_app(app: typer.Typer, prog: str) -> None:
    """Run ``app`` as the ``prog`` console script and exit with its code.

    Usage errors print ``error: <reason> (see <prog> --help)`` and exit 2; Ctrl-C while
    Click is still parsing exits 130. Errors the commands raise themselves are theirs.
    """
    usage_errors, aborts = _click_exceptions()
    try:
        code = app(standalone_mode=False, prog_name=prog)
    except usage_errors as error:
        typer.echo(f"error: {error.format_message()} (see {prog} --help)", err=True)  # type: ignore[attr-defined]
        code = 2
    except aborts:
        code = 130
    sys.exit(code if isinstance(code, int) else 0)


def size_option(text: str | None, option: str, min_side: int = 16, max_side: int = 8192) -> tuple[int, int] | None:
    """``--size``/``--crop`` text -> (H, W), None stays None; a bad value is a usage error
    naming ``option`` (so it prints as one line through :func:`run_app`)."""
    if text is None:
        return None
    try:
        return sizes.parse_size(text, min_side, max_side)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint=f"'{option}'") from None

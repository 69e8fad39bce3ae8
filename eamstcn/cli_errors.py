"""One-line usage errors for every console script.

Typer prints a malformed or missing option as a boxed usage panel; our commands promise
one clear line and a non-zero exit for bad input. :func:`run_app` runs a Typer app with
Click's standalone mode off and turns its usage errors into ``error: ...`` lines.
"""

from __future__ import annotations

import sys

import typer

from eamstcn import sizes
from eamstcn.entry_points import prepare_process

__all__ = ["missing_extra", "run_app", "size_option"]

#: Optional libraries -> the extra that installs them (pyproject.toml), so a command that
#: needs one on a runtime-only install says what to install instead of printing a traceback.
EXTRAS = {
    "timm": "model", "onnx": "model", "onnxslim": "model",
    "albumentations": "train", "pandas": "train", "skimage": "train",
    "matplotlib": "bench", "psutil": "bench",
    "onnxruntime": "cpu", "cv2": "headless", "tensorrt": "trt",
}


def _click_exceptions() -> tuple[tuple[type[Exception], ...], tuple[type[BaseException], ...]]:
    """(usage errors, aborts) as Typer raises them, without importing Click.

    Typer >= 0.2x vendors its own Click and no longer depends on Click; older Typer
    re-exports Click's classes. Either way ``typer.BadParameter`` derives from the
    ``UsageError`` Typer's parser raises, and ``typer.Abort`` is its Abort. Importing
    ``click`` here broke every command on the runtime-only install (issue 20). A Click
    some other library already imported is honoured too, without importing it.
    """
    usage: list[type[Exception]] = [c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError"]
    abort: list[type[BaseException]] = [typer.Abort]
    click = sys.modules.get("click")
    if click is not None:
        usage.append(click.UsageError)
        abort.append(click.Abort)
    return tuple(usage), tuple(abort)


def run_app(app: typer.Typer, prog: str) -> None:
    """Run ``app`` as the ``prog`` console script and exit with its code.

    Usage errors print ``error: <reason> (see <prog> --help)`` and exit 2; Ctrl-C that
    the command does not catch exits 130 (Typer turns it into ``Exit(130)``, an abort
    while parsing lands here). Errors the commands find themselves are theirs to print,
    with exit 2 too (the exit-code table in README, "Edge boxes / hardening").
    The process is prepared first (:func:`eamstcn.entry_points.prepare_process`: quiet
    OpenCV), also when the command runs as ``python -m``.
    """
    prepare_process()
    usage_errors, aborts = _click_exceptions()
    try:
        code = app(standalone_mode=False, prog_name=prog)
    except usage_errors as error:
        typer.echo(f"error: {error.format_message()} (see {prog} --help)", err=True)  # type: ignore[attr-defined]
        code = 2
    except aborts:
        code = 130
    except ModuleNotFoundError as error:
        message = missing_extra(error, prog)
        if message is None:
            raise
        typer.echo(f"error: {message}", err=True)
        code = 2
    sys.exit(code if isinstance(code, int) else 0)


def missing_extra(error: ModuleNotFoundError, prog: str) -> str | None:
    """One line naming the extra to install for an optional library this install lacks;
    None for any other missing module (that one is a bug, not the user's install)."""
    root = (error.name or "").split(".")[0]
    extra = EXTRAS.get(root)
    if extra is None:
        return None
    return f"{prog} needs {root} for this, which this install lacks: pip install \"eamstcn[{extra}]\""


def size_option(
    text: str | None, option: str, min_side: int = 16, max_side: int = 8192, short_side: bool = True
) -> tuple[int, int] | None:
    """``--size``/``--crop`` text -> (H, W) through :func:`eamstcn.sizes.parse_size`, None
    stays None; a bad value is a usage error naming ``option`` (so it prints as one line
    through :func:`run_app`, exit 2)."""
    if text is None:
        return None
    try:
        return sizes.parse_size(text, min_side, max_side, short_side)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint=f"'{option}'") from None

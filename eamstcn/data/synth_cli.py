"""``eamstcn-synth``: write a synthetic annotated video dataset in DAVIS layout."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperCommand

from eamstcn import sizes
from eamstcn.data.synth import SyntheticSequence, VideoWriteError, generate_dataset, write_video

__all__ = ["app", "main", "parse_size"]

_MIN_SIDE, _MAX_SIDE = 32, 4096


def parse_size(text: str) -> tuple[int, int]:
    """``"96x160"`` -> (96, 160) as (height, width); each side in 32..4096.

    Raises ``typer.BadParameter`` with a one-line reason otherwise.
    """
    try:
        if "x" not in text.lower():  # a bare short side is an export/bench shorthand, not ours
            raise ValueError
        return sizes.parse_size(text, _MIN_SIDE, _MAX_SIDE)
    except ValueError as error:
        reason = str(error) if "each side" in str(error) else f"expected HEIGHTxWIDTH such as 96x160, got {text!r}"
        raise typer.BadParameter(reason, param_hint="'--size'") from None


def _usage_error_type() -> type[Exception]:
    """The click exception base class that typer raises for usage errors.

    Recent typer releases vendor click (``typer._click``) while older ones re-export the
    ``click`` package's classes; either way it is the ``ClickException`` base of
    ``typer.BadParameter``.
    """
    for cls in typer.BadParameter.__mro__:
        if cls.__name__ == "ClickException":
            return cls
    return typer.BadParameter


class _OneLineErrors(TyperCommand):
    """Report usage errors as a single ``error: ...`` line instead of click's usage block
    (or typer's boxed panel), and exit with click's code (2)."""

    def main(  # type: ignore[override]
        self,
        args: Any = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args=args, prog_name=prog_name, complete_var=complete_var,
                                standalone_mode=False, **extra)
        try:
            # Non-standalone: click raises usage errors instead of printing them, and
            # returns the exit code of --help or typer.Exit instead of calling sys.exit.
            result = super().main(args=args, prog_name=prog_name, complete_var=complete_var,
                                  standalone_mode=False, **extra)
        except _usage_error_type() as error:
            typer.echo(f"error: {error.format_message()}", err=True)  # type: ignore[attr-defined]
            sys.exit(getattr(error, "exit_code", 2))
        except typer.Abort:
            typer.echo("Aborted.", err=True)
            sys.exit(1)
        sys.exit(result if isinstance(result, int) else 0)


app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain click help: re-wraps the docstring's paragraphs
    help="Write synthetic annotated videos in DAVIS layout.",
)


@app.command(cls=_OneLineErrors)
def synth(
    out: Annotated[Path, typer.Option("--out", "-o", file_okay=False,
                                      help="Dataset folder to write (created if missing).")],
    sequences: Annotated[int, typer.Option(min=1, help="Number of sequences.")] = 10,
    frames: Annotated[int, typer.Option(min=1, help="Frames per sequence.")] = 30,
    size: Annotated[str, typer.Option(help="Frame size HEIGHTxWIDTH, each side 32..4096.")] = "96x160",
    objects: Annotated[int, typer.Option(min=1, max=20, help="Annotated objects per sequence.")] = 2,
    seed: Annotated[int, typer.Option(min=0, help="Dataset seed; same seed, same bytes.")] = 0,
    video: Annotated[bool, typer.Option(
        "--video/--no-video", help="Also write videos/<sequence>.mp4 (input for eamstcn-run).")] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
) -> None:
    """Write synthetic annotated videos in DAVIS layout.

    Frames go to OUT/JPEGImages/480p/<sequence>/%05d.jpg and masks (palette PNGs, every
    frame annotated) to OUT/Annotations/480p/<sequence>/%05d.png, sequences named
    synth-<seed>-<i>. Each clip has textured objects on a panning textured background,
    still and fast stretches, scale change, an occluder that hides the last object for a
    few frames, and (with 2+ objects) look-alike objects 1 and 2 that swap places.
    """
    height, width = parse_size(size)
    if video and (height % 2 or width % 2):
        raise typer.BadParameter(f"--video needs an even height and width, got {height}x{width}",
                                 param_hint="'--size'")

    def save_video(clip: SyntheticSequence) -> None:
        write_video(out / "videos" / f"{clip.name}.mp4", clip.frames)

    try:
        names = generate_dataset(
            out, sequences, frames, height, width, objects, seed,
            progress=progress, on_sequence=save_video if video else None,
        )
    except OSError as error:  # unwritable folder, full disk...
        reason = error.strerror or str(error)
        typer.echo(f"error: cannot write the dataset: {reason}: {error.filename or out}", err=True)
        raise typer.Exit(2) from None
    except (ValueError, VideoWriteError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None
    extra = f" and {len(names)} mp4 videos in {out / 'videos'}" if video else ""
    typer.echo(
        f"Wrote {len(names)} sequences ({frames} frames, {height}x{width}, {objects} object{'s' if objects != 1 else ''}, "
        f"seed {seed}) to {out} (JPEGImages/480p, Annotations/480p){extra}."
    )


def main() -> None:
    """Console entry point of ``eamstcn-synth``."""
    app()


if __name__ == "__main__":
    main()

"""``eamstcn-synth``: write a synthetic annotated video dataset in DAVIS layout."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from eamstcn.cli_errors import run_app, size_option
from eamstcn.data.synth import SyntheticSequence, VideoWriteError, generate_dataset, write_video

__all__ = ["app", "main"]

#: Each side of a generated frame, in pixels (a bare short side is export's and bench's
#: shorthand for 16:9 frames, not this command's: it asks for HEIGHTxWIDTH).
MIN_SIDE, MAX_SIDE = 32, 4096


app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain click help: re-wraps the docstring's paragraphs
    help="Write synthetic annotated videos in DAVIS layout.",
)


@app.command()
def synth(
    out: Annotated[Path, typer.Option("--out", "-o", file_okay=False,
                                      help="Dataset folder to write (created if missing).")],
    sequences: Annotated[int, typer.Option(min=1, help="Number of sequences.")] = 10,
    frames: Annotated[int, typer.Option(min=1, help="Frames per sequence.")] = 30,
    size: Annotated[str, typer.Option(help=f"Frame size HEIGHTxWIDTH, each side {MIN_SIDE}..{MAX_SIDE}.")] = "96x160",
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
    height, width = size_option(size, "--size", MIN_SIDE, MAX_SIDE, short_side=False)  # type: ignore[misc]
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
    """Console entry point of ``eamstcn-synth``: usage errors are one line, exit 2 (run_app)."""
    run_app(app, "eamstcn-synth")


if __name__ == "__main__":
    main()

"""``eamstcn-run``: segment a camera, video, stream or frame folder from a first-frame mask.

Thin: parses options into :class:`~eamstcn.runtime.runner.RunOptions` and calls
:func:`~eamstcn.runtime.runner.run` (or :func:`~eamstcn.runtime.demo.run_demo` for
``--demo``). User errors print one line and exit 2; Ctrl-C flushes outputs and exits 130.
"""

from __future__ import annotations

import os
import traceback
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from eamstcn.cli_errors import run_app, size_option
from eamstcn.runtime import termination
from eamstcn.runtime.config import MemoryConfig, SaveConfig
from eamstcn.runtime.lost import DEFAULT_LOST_AFTER
from eamstcn.runtime.marking import parse_add_box
from eamstcn.runtime.prompts import parse_box, parse_point
from eamstcn.runtime.run_options import RunError, RunOptions, parse_add_mask
from eamstcn.runtime.runner import USER_ERRORS, run

app = typer.Typer(add_completion=False, help=__doc__, pretty_exceptions_enable=False)


class Backend(str, Enum):
    auto = "auto"
    torch = "torch"
    onnxruntime = "onnxruntime"
    tensorrt = "tensorrt"


class Precision(str, Enum):
    auto = "auto"
    fp32 = "fp32"
    fp16 = "fp16"
    int8 = "int8"  # ONNX Runtime CPU engines from `eamstcn-export --int8`


class SaveMode(str, Enum):
    adaptive = "adaptive"
    fixed = "fixed"


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


@app.command()
def segment(
    mask: Annotated[Optional[Path], typer.Option("--mask", help="First-frame mask: palette PNG, 0/255 binary or RGB colour-coded.")] = None,
    box: Annotated[Optional[list[str]], typer.Option("--box", help="X,Y,W,H around an object in the first frame (pixels, as cv2.selectROI gives); repeatable: ids 1, 2, ... in order. Instead of --mask.")] = None,
    point: Annotated[Optional[list[str]], typer.Option("--point", help="X,Y on an object in the first frame; repeatable, ids after the boxes'. Instead of --mask.")] = None,
    add_box: Annotated[Optional[list[str]], typer.Option("--add-box", help="FRAME:X,Y,W,H adds an object at that frame; FRAME:X,Y,W,H:ID re-marks object ID (repeatable).")] = None,
    snapshot: Annotated[Optional[Path], typer.Option("--snapshot", help="Write the source's first frame to this .jpg/.png and exit (to paint a mask with your own tools).")] = None,
    lost_after: Annotated[int, typer.Option("--lost-after", help="Report an object lost when its mask stays empty this many frames (with --output; 0: never).")] = DEFAULT_LOST_AFTER,
    no_overlay: Annotated[bool, typer.Option("--no-overlay", help="No overlay.mp4 in --output (masks and stats.csv only): memory stays flat on day-long runs.")] = False,
    demo: Annotated[bool, typer.Option("--demo", help="Segment a generated clip with the bundled model; outputs in --output (default ./eamstcn-demo).")] = False,
    camera: Annotated[Optional[int], typer.Option("--camera", help="Camera index.")] = None,
    video: Annotated[Optional[str], typer.Option("--video", help="Video file, or rtsp:// / http:// stream URL.")] = None,
    frames: Annotated[Optional[Path], typer.Option("--frames", help="Folder of .jpg/.png frames (sorted by name).")] = None,
    engines: Annotated[Optional[Path], typer.Option("--engines", help="Engine bundle from eamstcn-export (default ./engines where it exists, else the bundled model).")] = None,
    checkpoint: Annotated[Optional[Path], typer.Option("--checkpoint", help="best.pth, for the PyTorch path.")] = None,
    backend: Annotated[Backend, typer.Option("--backend", help="auto picks tensorrt > onnxruntime > torch.")] = Backend.auto,
    precision: Annotated[Precision, typer.Option("--precision", help="auto: fp16 on CUDA where available; int8: CPU engines from eamstcn-export --int8.")] = Precision.auto,
    save: Annotated[SaveMode, typer.Option("--save", help="Memory save rule.")] = SaveMode.adaptive,
    save_every: Annotated[Optional[int], typer.Option("--save-every", help="Periodic save interval (default 5 fixed, 10 adaptive).")] = None,
    memory_frames: Annotated[int, typer.Option("--memory-frames", help="Memory capacity in frames.")] = 16,
    top_k: Annotated[int, typer.Option("--top-k", help="Memory positions read per query position.")] = 20,
    add_mask: Annotated[Optional[list[str]], typer.Option("--add-mask", help="FRAME:PATH at that frame: grey-level/binary masks add new objects; palette ids add or correct (repeatable).")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", help="Write masks/, overlay.mp4 and stats.csv here.")] = None,
    show: Annotated[bool, typer.Option("--show", help="Show a window (where a display exists).")] = False,
    max_frames: Annotated[Optional[int], typer.Option("--max-frames", help="Stop after this many frames.")] = None,
    size: Annotated[Optional[str], typer.Option("--size", help="HxW frames are resized to on the PyTorch path (an engine bundle has its own); default: the bundled model's size, else each frame's own.")] = None,
    device: Annotated[Optional[str], typer.Option("--device", help="cpu, cuda or cuda:N (default: cuda if available).")] = None,
) -> None:
    """Segment the objects of the first-frame mask through a live feed or a video."""
    frame_size = size_option(size, "--size")  # a usage error: one line, exit 2 (outside the catch-all below)
    try:
        # Each value is checked once, where it lives: the configs their own fields (made
        # before --demo and --snapshot, so that those refuse a bad value too), RunOptions
        # its own fields and how they combine, the runner the files and the engines.
        memory = _config(MemoryConfig, capacity=memory_frames, top_k=top_k)
        save_config = _config(SaveConfig, mode=save.value, save_every=save_every)
        if demo:
            if any(value is not None for value in (mask, camera, video, frames)) or add_mask or box or point or add_box:
                raise RunError("--demo brings its own clip and first mask: drop --mask, --box, --point, --add-mask, --add-box and the source")
            _run_demo(output, checkpoint, engines, backend.value, device)
            return
        if snapshot is not None:
            _snapshot(snapshot, camera, video, frames)
            return
        options = RunOptions(
            mask=mask,
            boxes=tuple(parse_box(text) for text in box or []),
            points=tuple(parse_point(text) for text in point or []),
            add_boxes=tuple(parse_add_box(text) for text in add_box or []),
            lost_after=lost_after,
            overlay=not no_overlay,
            camera=camera,
            video=video,
            frames=frames,
            engines=engines,
            checkpoint=checkpoint,
            backend=backend.value,
            precision=precision.value,
            device=device,
            memory=memory,
            save=save_config,
            add_masks=tuple(parse_add_mask(text) for text in add_mask or []),
            output=output,
            show=show,
            max_frames=max_frames,
            frame_size=frame_size,
        )
        summary = run(options)
    except USER_ERRORS as error:
        raise _fail(str(error)) from None
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (termination.install) before the first frame
        typer.echo(termination.stop_line(), err=True)
        raise typer.Exit(termination.exit_code()) from None
    except Exception as error:  # a bug, not a user error: still one line unless asked
        if os.environ.get("EAMSTCN_DEBUG"):
            traceback.print_exc()
        raise _fail(f"unexpected {type(error).__name__}: {error} (set EAMSTCN_DEBUG=1 for the traceback)", 1) from None
    for line in summary.lines():
        typer.echo(line)
    if output is not None:
        typer.echo(f"outputs: {output}")
    if summary.interrupted:
        if termination.received():
            typer.echo(termination.stop_line(), err=True)
        raise typer.Exit(termination.exit_code())


def _snapshot(path: Path, camera: int | None, video: str | None, frames: Path | None) -> None:
    from eamstcn.runtime.snapshot import write_snapshot

    typer.echo(f"snapshot: {write_snapshot(path, camera, video, frames)}")


def _run_demo(output: Path | None, checkpoint: Path | None, engines: Path | None, backend: str, device: str | None) -> None:
    from eamstcn.runtime.demo import DEFAULT_DEMO_DIR, run_demo

    result = run_demo(output or DEFAULT_DEMO_DIR, checkpoint, engines, backend, device or "cpu")
    for line in result.lines():
        typer.echo(line)
    if result.summary.interrupted:
        raise typer.Exit(termination.exit_code())


#: Config field -> the flag that sets it, so messages name what the user typed.
_FLAGS = {"capacity": "--memory-frames", "top_k": "--top-k", "save_every": "--save-every"}


def _config(kind: type, **values: object) -> object:
    """``kind(**values)``; its refusal as a :class:`RunError` that names the flag."""
    try:
        return kind(**values)
    except ValueError as error:
        message = str(error)
        for name, flag in _FLAGS.items():  # the config's field names are not what users typed
            if message.startswith(f"{name} "):
                message = flag + message[len(name):]
        raise RunError(message) from None


def main() -> None:
    """Entry point: usage errors (a missing or malformed option) also become one line;
    SIGTERM (systemctl stop, docker stop) ends the run like Ctrl-C, exit 143."""
    termination.install()
    run_app(app, "eamstcn-run")


if __name__ == "__main__":
    main()

"""``eamstcn-bench``: the PyTorch path against the exported engines, per stage, one clip, one run."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import typer

from eamstcn.cli_errors import run_app, size_option
from eamstcn.bench.config import BACKEND_NAMES, BenchConfig
from eamstcn.bench.report import format_table, write_csv, write_json, write_plot

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)

_HELP = f"""Measure FPS and per-stage latency of every backend on the same clip in one run.

With no options: builds the default B1/B1 network (random weights), exports it to a
temporary folder, generates a clip with motion and a known first mask, and runs the
PyTorch eager fp32 path (the baseline) and every engine backend available here. A CPU
uses 240x432 and 40 frames (3-6 minutes on 2 cores, export and INT8 calibration included); a GPU 480x854 and 200 frames.

Per backend: median and p90 ms per stage (preprocess, key_encoder, memory_read, decoder,
aggregate, save_decision, value_encoder on stored frames, postprocess), end-to-end FPS
(label map on the host, synchronised), share of time outside the three networks, peak
host and device memory, frames in memory, speed-up over the baseline, and per-frame IoU
agreement with the baseline's masks (mean and minimum: the drift check).

Backends: {", ".join(BACKEND_NAMES)}. Unavailable ones are listed as skipped with why.

Examples:
  eamstcn-bench
  eamstcn-bench --checkpoint best.pth --engines engines --video street.mp4 --mask first.png
  eamstcn-bench --sweep both --plot bench.png --csv bench.csv --json bench.json
"""


def _timestamped(started: float) -> Callable[[str], None]:
    """Progress lines on stderr with the seconds since the start: which stage (building,
    exporting, warming up, measuring backend X) is running, and that it still is."""

    def notify(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {message}", file=sys.stderr, flush=True)

    return notify


@app.command(help=_HELP)
def bench(
    checkpoint: Path | None = typer.Option(None, "--checkpoint", help="Your checkpoint; default: B1/B1 with random weights."),
    engines: Path | None = typer.Option(None, "--engines", help="An exported bundle; default: export the checkpoint to a temp folder."),
    video: str | None = typer.Option(None, "--video", help="Real footage (file or URL) instead of the generated clip."),
    frames: Path | None = typer.Option(None, "--frames", help="A folder of frames instead of the generated clip."),
    mask: Path | None = typer.Option(None, "--mask", help="First-frame mask for --video/--frames (default: a centred ellipse)."),
    size: str | None = typer.Option(None, "--size", help="Frame size HxW or short side (16:9): default 240x432 on CPU, 480x854 on GPU."),
    objects: int = typer.Option(1, "--objects", help="Objects in the generated clip."),
    frames_count: int | None = typer.Option(None, "--frames-count", help="Frames to run (default 40 on CPU, 200 on GPU)."),
    backends: str | None = typer.Option(None, "--backends", help="Comma-separated subset of the backends above."),
    memory_frames: int = typer.Option(16, "--memory-frames", help="Memory bank capacity in frames."),
    save: str = typer.Option("adaptive", "--save", help="Save rule: fixed or adaptive."),
    warmup: int | None = typer.Option(None, "--warmup", help="Warm-up frames, run in a separate pass (default 3 CPU / 20 GPU)."),
    sweep: str = typer.Option("none", "--sweep", help="Also sweep FPS against memory frames (memory), objects 1..4 (objects), or both."),
    csv_path: Path | None = typer.Option(None, "--csv", help="Write one row per backend."),
    json_path: Path | None = typer.Option(None, "--json", help="Write header, rows and sweeps."),
    plot: Path | None = typer.Option(None, "--plot", help="Write a PNG: FPS per backend, stacked stage times, sweeps."),
    device: str | None = typer.Option(None, "--device", help="cpu or cuda[:N] (default: CUDA if available)."),
) -> None:
    if save not in ("fixed", "adaptive"):
        raise typer.BadParameter("choose fixed or adaptive", param_hint="'--save'")
    if sweep not in ("none", "memory", "objects", "both"):
        raise typer.BadParameter("choose none, memory, objects or both", param_hint="'--sweep'")
    outputs = (("csv", csv_path), ("json", json_path), ("plot", plot))
    _check_outputs(outputs)
    try:
        config = BenchConfig(
            checkpoint=checkpoint, engines=engines, video=video, frames_dir=frames, mask=mask, size=size_option(size, "--size"),
            objects=objects, frames_count=frames_count,
            backends=tuple(b.strip() for b in backends.split(",") if b.strip()) if backends else None,
            memory_frames=memory_frames, save=save, warmup=warmup, sweep=sweep, device=device,  # type: ignore[arg-type]
        )
        from eamstcn.bench.runner import run_bench

        report = run_bench(config, notify=_timestamped(time.perf_counter()))
    except ValueError as error:  # every user-caused error type in eamstcn is a ValueError
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None  # user errors exit 2, as usage errors do
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(130) from None
    typer.echo(format_table(report.header, report.results))
    writers = {
        "csv": lambda path: write_csv(path, report.results),
        "json": lambda path: write_json(path, report.header, report.results, report.sweeps),
        "plot": lambda path: write_plot(path, report.header, report.results, report.sweeps),
    }
    failed = False
    for label, path in outputs:  # one failure loses neither the table above nor the other files
        if not path:
            continue
        try:
            writers[label](path)
        except OSError as error:
            failed = True
            typer.echo(f"error: writing --{label} {path} failed: {error.strerror or error}", err=True)
        else:
            print(f"wrote {label}: {path}", file=sys.stderr)
    if failed:
        raise typer.Exit(2)


def _check_outputs(outputs: tuple[tuple[str, Path | None], ...]) -> None:
    """Every output file writable before minutes of measuring, and matplotlib there for --plot."""
    from eamstcn.fileio import output_problem

    for label, path in outputs:
        problem = None if path is None else output_problem(path, folder=False)
        if problem is not None:
            typer.echo(f"error: --{label} {path}: {problem}", err=True)
            raise typer.Exit(2)
    if dict(outputs)["plot"]:
        import importlib.util

        if importlib.util.find_spec("matplotlib") is None:
            typer.echo('error: --plot needs matplotlib, which this install lacks: pip install "eamstcn[bench]"', err=True)
            raise typer.Exit(2)


def main() -> None:
    run_app(app, "eamstcn-bench")


if __name__ == "__main__":
    main()

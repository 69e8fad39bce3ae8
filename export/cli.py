"""``eamstcn-export``: a checkpoint -> an engine bundle (three ONNX graphs, manifest, plans)."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from eamstcn.cli_errors import run_app, size_option
from eamstcn.sizes import parse_size

if TYPE_CHECKING:
    from eamstcn.export.bundle import ExportResult

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)

# One line per paragraph: Typer rewraps help text to the terminal width.
_HELP = "\n\n".join(
    [
        "Export an EamStcn checkpoint to an engine bundle for the runtime.",
        "Writes three graphs (key_encoder, value_encoder, decoder) as fp32 ONNX; with --fp16 also FP16 ONNX "
        "and, where the tensorrt package imports, FP16 TensorRT plans. Every graph passes the ONNX checker and "
        "runs in ONNX Runtime against PyTorch at K=1 and K=3 objects; the export fails, leaving nothing behind, "
        "if fp32 parity is outside 1e-4 (max error relative to the output's largest magnitude). manifest.json "
        "records the model config, sizes, tensor names, shapes, dtypes, versions and the measured parity.",
        "The bundle is built beside --out and renamed into place: an existing bundle is replaced, any other "
        "folder is left alone.",
        "Example: eamstcn-export --checkpoint runs/best.pth --fp16 --size 480 --max-objects 4",
    ]
)


def _say(started: float):
    def say(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {message}", file=sys.stderr, flush=True)

    return say


def _format_rel(parity: dict | None, label: str) -> str:
    if parity is None or label not in parity:
        return "-"
    return f"{parity[label].max_rel:.1e}"


def summary_table(result: ExportResult) -> str:
    """The final table: one row per file with precision, size and parity (max rel error)."""
    header = ("file", "precision", "size MB", "max rel K=1", "max rel K=3")
    rows = [
        (report.path, report.precision, f"{report.bytes / 1e6:.1f}", _format_rel(report.parity, "K=1"), _format_rel(report.parity, "K=3"))
        for report in result.files
    ]
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def _bundled_checkpoint() -> tuple[Path, tuple[int, int] | None]:
    """The bundled model's checkpoint and frame size, announced in one line; a missing or
    damaged one is an :class:`ExportError` (one line)."""
    from eamstcn.default_model import BundledModelError, BundledModelMissing, bundled_model
    from eamstcn.export.bundle import ExportError

    try:
        model = bundled_model()
    except BundledModelMissing:
        raise ExportError("no --checkpoint given and the bundled model is missing in this install: pass --checkpoint best.pth") from None
    except BundledModelError as error:
        raise ExportError(str(error)) from None
    typer.echo(model.describe(), err=True)
    return model.path, model.frame_size


@app.command(help=_HELP)
def export(
    checkpoint: Path | None = typer.Option(
        None, "--checkpoint", help="EamStcn checkpoint (.pth) written by eamstcn-train; default: the bundled model."
    ),
    out: Path = typer.Option(Path("engines"), "--out", help="Bundle folder; an existing bundle there is replaced."),
    fp16: bool = typer.Option(False, "--fp16", help="Also write FP16 ONNX graphs (GPU providers) and TensorRT FP16 plans."),
    size: str | None = typer.Option(
        None, "--size",
        help="Frame size the runtime resizes to: the short side (480 -> 480x854, 16:9) or HxW (e.g. 720x1280). "
        "Graphs take it padded to multiples of 16 (480x854 -> 480x864). Default 480, or the bundled model's own size.",
    ),
    max_objects: int = typer.Option(4, "--max-objects", help="Largest object count K the TensorRT profile accepts."),
    opset: int = typer.Option(17, "--opset", help="ONNX opset (17 or newer)."),
    simplify: bool = typer.Option(True, "--simplify/--no-simplify", help="Simplify with onnxslim when it shrinks the graph and keeps parity."),
    trt: bool = typer.Option(True, "--trt/--no-trt", help="With --fp16, build TensorRT plans when the tensorrt package imports."),
    workspace: float = typer.Option(2.0, "--workspace", help="TensorRT builder workspace limit in GiB."),
    int8: bool = typer.Option(False, "--int8", help="Also write INT8 ONNX graphs for CPUs (static QDQ quantization, per-channel weights)."),
    calibration: Path | None = typer.Option(
        None, "--calibration",
        help="INT8 calibration frames: a folder of images, a video or a DAVIS-layout dataset; default: generated clips.",
    ),
    calibration_sequences: str | None = typer.Option(
        None, "--calibration-sequences", metavar="A,B,...",
        help="INT8, DAVIS-layout --calibration: calibrate on these sequences (e.g. training ones only); "
             "default: 4 spread over the name list.",
    ),
    calibration_frames: int = typer.Option(24, "--calibration-frames", help="INT8: frames to calibrate on (a quarter is held out to measure parity)."),
    int8_target: str = typer.Option(
        "auto", "--int8-target", help="INT8 recipe for this CPU (auto) or another: x86-avx2 (no VNNI: 7-bit weights), x86-vnni, arm."
    ),
    int8_min_iou: float = typer.Option(
        0.98, "--int8-min-iou", help="INT8: keep graphs in fp32 until the masks agree with fp32's at this mean IoU (calibration clips)."
    ),
    int8_min_speedup: float = typer.Option(
        1.1, "--int8-min-speedup", help="INT8: a graph whose INT8 file is less than this much faster than fp32 here stays fp32 (0: quantize all)."
    ),
) -> None:
    # A bad --size is a usage error (one line, exit 2) before anything loads; a size too
    # small for the network is the export's own check (validate), naming its minimum.
    frame_size = size_option(size, "--size", min_side=1)
    # Imported here, not at the top: onnx and timm come with the `model` extra, and without
    # them --help still works and the command says what to install (run_app).
    from eamstcn.export.bundle import ExportConfig, ExportError, export_bundle

    started = time.perf_counter()
    try:
        bundled_size = None
        if checkpoint is None:
            checkpoint, bundled_size = _bundled_checkpoint()
        frame_size = frame_size or bundled_size or parse_size("480")
        config = ExportConfig(
            checkpoint=checkpoint, out=out, fp16=fp16, frame_size=frame_size, max_objects=max_objects,
            opset=opset, simplify=simplify, trt=trt, workspace_gb=workspace,
            int8=int8, calibration=calibration, calibration_frames=calibration_frames, int8_target=int8_target,
            calibration_sequences=tuple(n.strip() for n in calibration_sequences.split(",") if n.strip())
            if calibration_sequences else None,
            int8_min_agreement=int8_min_iou, int8_min_speedup=int8_min_speedup,
        )
        result = export_bundle(config, progress=_say(started))
    except ExportError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=2) from None
    except KeyboardInterrupt:
        typer.echo("interrupted: no bundle was written", err=True)
        raise typer.Exit(code=130) from None

    manifest = result.manifest
    typer.echo(summary_table(result))
    for note in result.notes:
        typer.echo(f"note: {note}")
    height, width = manifest["frame_size"]
    padded_h, padded_w = manifest["padded_size"]
    typer.echo(
        f"wrote {result.out} ({height}x{width} frames, padded {padded_h}x{padded_w}, opset {manifest['opset']}) "
        f"in {result.seconds:.0f}s"
    )


def main() -> None:
    run_app(app, "eamstcn-export")


if __name__ == "__main__":
    main()

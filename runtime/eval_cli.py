"""``eamstcn-eval``: DAVIS semi-supervised evaluation through the runtime session."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from eamstcn.cli_errors import run_app, size_option

app = typer.Typer(add_completion=False, help=__doc__)


@app.command()
def evaluate_command(
    data: Annotated[Path, typer.Option("--data", help="DAVIS-layout folder (2016 0/255 or 2017 palette masks).")],
    checkpoint: Annotated[Optional[Path], typer.Option("--checkpoint", help="best.pth (torch backend).")] = None,
    engines: Annotated[Optional[Path], typer.Option("--engines", help="Engine bundle from eamstcn-export.")] = None,
    out: Annotated[Path, typer.Option("--out", help="Predictions <out>/<seq>/%05d.png and CSV tables.")] = Path("eval_out"),
    save: Annotated[str, typer.Option("--save", help="Memory save rule: fixed or adaptive.")] = "adaptive",
    save_every: Annotated[Optional[int], typer.Option("--save-every", min=1, help="Default 5 (fixed) / 10 (adaptive).")] = None,
    memory_frames: Annotated[int, typer.Option("--memory-frames", min=2, help="Memory capacity in frames.")] = 16,
    top_k: Annotated[int, typer.Option("--top-k", min=1)] = 20,
    size: Annotated[Optional[str], typer.Option("--size", help="HxW frames are resized to (torch backend); default native.")] = None,
    sequences: Annotated[Optional[str], typer.Option("--sequences", help="Comma-separated subset.")] = None,
    backend: Annotated[str, typer.Option("--backend", help="auto, torch, onnxruntime or tensorrt.")] = "auto",
    precision: Annotated[str, typer.Option("--precision", help="auto, fp32, fp16 (CUDA) or int8 (CPU, from eamstcn-export --int8).")] = "auto",
    device: Annotated[Optional[str], typer.Option("--device", help="cpu or cuda; default CUDA if available.")] = None,
    resolution: Annotated[Optional[str], typer.Option("--resolution", help="DAVIS resolution folder (default 480p, else Full-Resolution, else the only one).")] = None,
) -> None:
    """Segment every sequence with the per-frame session and score J, F and J&F."""
    from eamstcn.runtime.evaluate import EvalOptions, evaluate
    from eamstcn.runtime.config import MemoryConfig, SaveConfig

    if checkpoint is None and engines is None:
        from eamstcn.default_model import BundledModelError, BundledModelMissing, bundled_model

        try:
            model = bundled_model()
        except BundledModelMissing:
            typer.echo("error: pass --checkpoint PATH or --engines DIR (the bundled model is missing in this install)", err=True)
            raise typer.Exit(2) from None
        except BundledModelError as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(2) from None
        typer.echo(model.describe(), err=True)
        checkpoint = model.path
        if size is None:
            # Its exported engines too (auto: ONNX Runtime where installed); an explicit
            # --size needs the PyTorch path, as engines have their own fixed size.
            engines = model.engines
            if model.frame_size is not None:
                size = f"{model.frame_size[0]}x{model.frame_size[1]}"
    try:
        options = EvalOptions(
            data=data, out=out, checkpoint=checkpoint, engines=engines, backend=backend, precision=precision, device=device,
            memory=MemoryConfig(capacity=memory_frames, top_k=top_k),
            save=SaveConfig(mode=save, save_every=save_every),  # type: ignore[arg-type]
            size=size_option(size, "--size"),
            sequences=tuple(s.strip() for s in sequences.split(",") if s.strip()) if sequences else None,
            resolution=resolution,
        )
        report = evaluate(options, notify=typer.echo)
    except typer.BadParameter:
        raise
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None  # user errors exit 2, as usage errors do
    typer.echo(f"{'sequence':<24} {'J&F':>6} {'J':>6} {'F':>6} {'frames':>6} {'stored':>6} {'FPS':>7}")
    for row in report.rows():
        typer.echo(f"{row['Sequence']:<24} {row['J&F']:6.1f} {row['J']:6.1f} {row['F']:6.1f} "
                   f"{row['Frames']:6d} {row['Stored']:6d} {row['FPS']:7.2f}")
    total = report.summary()
    typer.echo(f"{'ALL':<24} {total['J&F']:6.1f} {total['J']:6.1f} {total['F']:6.1f} "
               f"{total['Frames']:6d} {total['Stored']:6d} {total['FPS']:7.2f}")
    typer.echo(f"save={save} memory={memory_frames} top-k={top_k}; {report.engines}; tables in {out}")


def main() -> None:
    run_app(app, "eamstcn-eval")


if __name__ == "__main__":
    main()

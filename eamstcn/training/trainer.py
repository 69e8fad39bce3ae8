"""The training loop: one function, :func:`train`, for both phases.

Single process or under ``torchrun`` (DistributedDataParallel, one data shard per
rank, only rank 0 writes). Resume is exact: model, optimiser, scheduler, AMP scaler, step
and RNG states are restored, and samples are a pure function of their index.
"""

from __future__ import annotations

import json
import math
import random
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from eamstcn.checkpoint import CheckpointError, build_model, load_checkpoint, save_checkpoint
from eamstcn.network import EamStcn
from eamstcn.network.backbone import load_trunk_weights
from eamstcn.training.config import TrainConfig
from eamstcn.training.datasets import Augmentation, ClipDataset, StillClips, VideoClips
from eamstcn.training.distributed import DistInfo, choose_device, init_distributed, local_rank_from_env, shutdown
from eamstcn.training.layouts import find_all_videos, find_stills, sequence_names
from eamstcn.training.loss import bootstrap_fraction, bootstrapped_cross_entropy, soft_dice_loss
from eamstcn.training.regularisation import apply_regularisation
from eamstcn.training.step import TrainWrapper


@dataclass
class TrainResult:
    step: int
    losses: list[float]  # per iteration run in this call (this rank)
    best_jf: float | None
    out_dir: Path
    network: EamStcn  # this rank's trained network (on the training device)


def lr_factor(step: int, config: TrainConfig) -> float:
    """Multiplier of ``config.lr`` after ``step`` optimiser steps."""
    if config.warmup and step < config.warmup:
        return (step + 1) / config.warmup
    progress = step / config.iterations
    if config.lr_schedule == "cosine":
        return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    if config.lr_schedule == "step":
        return 0.1 ** sum(progress >= s for s in config.lr_steps)
    return 1.0


def _rng_state() -> dict[str, Any]:
    """RNG states as tensors and plain lists (what weights_only loading accepts)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "python": [version, list(internal), gauss],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _make_dataset(config: TrainConfig, data: list[Path], info: DistInfo, sources: DataSources) -> ClipDataset:
    kwargs = dict(max_objects=config.max_objects, augmentation=Augmentation(zoom=config.zoom, video_warp=config.video_warp))
    if config.phase == "phase1":
        stills = [pair for root in data for pair in find_stills(root, sources.resolution)]
        return StillClips(stills, config.crop, config.seed, info.rank, info.world_size, **kwargs)
    per_rank = config.batch_size

    def max_gap_at(index: int) -> int:
        return config.gaps.max_gap(index // per_rank, config.iterations)

    videos = find_all_videos(data, sources.resolution, sources.hold_out)
    return VideoClips(videos, config.crop, config.seed, max_gap_at, info.rank, info.world_size,
                      reverse_p=config.reverse_p, **kwargs)


def _initial_network(config: TrainConfig, init: Path | None) -> tuple[EamStcn, TrainConfig, dict[str, Any]]:
    """A fresh network with its trunks initialised as ``config`` says, or one continued from
    ``init`` (its model config and weights win). Also returns where the trunk weights came
    from, for the checkpoint's metadata."""
    if init is not None:
        checkpoint = load_checkpoint(init)
        network = build_model(checkpoint, str(init))
        inherited = checkpoint.metadata.get("trunk_init")
        return network, replace(config, model=checkpoint.config), {"from_checkpoint": str(init), "was": inherited}
    network = EamStcn(config.model)
    key = load_trunk_weights(network.key_trunk, config.model.key_backbone, config.key_init)
    value = load_trunk_weights(network.value_trunk, config.model.value_backbone, config.value_init)
    return network, config, {"key": key.to_dict(), "value": value.to_dict()}


@dataclass(frozen=True)
class DataSources:
    """Where samples come from besides ``--data``: the DAVIS resolution folder (None:
    480p, or the only one) and sequences held out of training and validated on."""

    resolution: str | None = None
    hold_out: tuple[str, ...] = ()


class _Logger:
    """Rank 0's JSON-lines log next to the checkpoints."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path, self.enabled = path, enabled

    def write(self, **record: Any) -> None:
        if self.enabled:
            with self.path.open("a", encoding="utf-8") as stream:
                stream.write(json.dumps(record) + "\n")


def train(
    config: TrainConfig,
    data: str | Path | list[Path],
    out: str | Path,
    *,
    resume: str | Path | None = None,
    init: str | Path | None = None,
    val: str | Path | list[Path] | None = None,
    sources: DataSources = DataSources(),
    device: str | None = None,
    progress: bool = True,
    stop_at: int | None = None,
) -> TrainResult:
    """Train for ``config.iterations`` steps (continuing from ``resume`` when given).

    ``data`` and ``val`` may be several folders (real video plus generated clips);
    ``sources.hold_out`` names sequences of ``data`` kept out of training and added to
    validation. Writes (rank 0 only) ``out/latest.pth`` every ``checkpoint_every`` steps
    and at the end, ``out/best.pth`` whenever validation J&F improves, ``out/log.jsonl``.
    ``stop_at`` ends the run early at that step (checkpoint written) while the learning
    rate and curricula still follow ``config.iterations``; ``--resume`` continues it.
    """
    torch_device = choose_device(device, local_rank_from_env())
    info = init_distributed(torch_device)
    try:
        roots = [Path(data)] if isinstance(data, (str, Path)) else [Path(d) for d in data]
        val_roots = [] if val is None else [Path(val)] if isinstance(val, (str, Path)) else [Path(v) for v in val]
        val_sets: list[tuple[Path, list[str] | None]] = [(root, None) for root in val_roots]
        if sources.hold_out:
            for root in roots:
                names = sequence_names(root, sources.resolution)
                if held := [name for name in sources.hold_out if name in names]:
                    val_sets.append((root, held))
        return _train(config, roots, Path(out), resume, init, val_sets or None, torch_device, info,
                      progress, stop_at, sources)
    finally:
        shutdown(info)


def _train(
    config: TrainConfig,
    data: list[Path],
    out: Path,
    resume: str | Path | None,
    init: str | Path | None,
    val: list[tuple[Path, list[str] | None]] | None,
    device: torch.device,
    info: DistInfo,
    progress: bool,
    stop_at: int | None,
    sources: DataSources = DataSources(),
) -> TrainResult:
    resume_state = load_checkpoint(resume) if resume is not None else None
    if resume_state is not None:
        if not resume_state.training:
            raise CheckpointError(f"{resume} holds no training state to resume from")
        config = replace(config, model=resume_state.config)
        init = None
    # Same seed on every rank for the initial weights (DDP also broadcasts rank 0's).
    torch.manual_seed(config.seed)
    if resume_state is not None:  # its weights are loaded below: no trunk initialisation
        network, trunk_init = EamStcn(config.model), resume_state.metadata.get("trunk_init", {})
    else:
        network, config, trunk_init = _initial_network(config, Path(init) if init else None)
    apply_regularisation(network, config.bn_momentum, config.drop_path, config.expansion_drop_path)
    random.seed(config.seed + info.rank)
    np.random.seed(config.seed + info.rank)
    torch.manual_seed(config.seed + info.rank)

    wrapper = TrainWrapper(network, freeze_bn=config.freeze_bn).to(device)
    optimizer = torch.optim.Adam(wrapper.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, config))
    use_amp = config.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    step, best_jf = 0, None
    if resume_state is not None:
        network.load_state_dict(resume_state.weights)
        state = resume_state.training
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        step, best_jf = int(state["step"]), state.get("best_jf")
        _set_rng_state(state["rng"][info.rank] if info.rank < len(state["rng"]) else state["rng"][0])
    model: torch.nn.Module = wrapper
    if info.enabled:
        # Depthwise weights (C, 1, 3, 3) get gradients whose size-1 axis has another
        # stride than DDP's bucket view; strides of size-1 axes never matter, so the
        # warning it prints on every rank is noise.
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        model = DistributedDataParallel(wrapper, device_ids=[device.index] if device.type == "cuda" else None)

    dataset = _make_dataset(config, data, info, sources)
    last = min(config.iterations, stop_at) if stop_at else config.iterations
    indices = range(step * config.batch_size, last * config.batch_size)
    loader = DataLoader(dataset, batch_size=config.batch_size, sampler=indices, num_workers=config.num_workers,
                        pin_memory=device.type == "cuda", persistent_workers=False)
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
    log = _Logger(out / "log.jsonl", info.is_main)

    def checkpoint(path: Path) -> None:
        # Every rank's RNG state is gathered so each resumes its own stream.
        rng = [_rng_state()]
        if info.enabled:
            gathered: list[Any] = [None] * info.world_size
            torch.distributed.all_gather_object(gathered, rng[0])
            rng = gathered
        if info.is_main:
            training = {
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if use_amp else None,
                "step": step, "best_jf": best_jf, "rng": rng, "world_size": info.world_size,
            }
            save_checkpoint(path, network, training, {
                "train_config": config.to_dict(), "data": [str(root) for root in data],
                "resolution": sources.resolution, "hold_out": list(sources.hold_out), "trunk_init": trunk_init})

    losses: list[float] = []
    wrapper.train()
    bar = tqdm(total=config.iterations, initial=step, disable=not (progress and info.is_main), unit="it",
               dynamic_ncols=True, desc=config.phase)
    started, window_start, window_steps = time.perf_counter(), time.perf_counter(), 0
    for batch in loader:
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
            logits = model(batch["frames"], batch["first_masks"], batch["selector"])  # (B, 2, K+1, H, W)
        fraction = bootstrap_fraction(step, config.bootstrap)
        flat_logits, flat_labels = logits.flatten(0, 1), batch["labels"][:, 1:].flatten(0, 1)
        loss = bootstrapped_cross_entropy(flat_logits, flat_labels, fraction)
        if config.dice_weight > 0:
            selector = batch["selector"].repeat_interleave(2, dim=0)  # frames 1 and 2 of each sample
            loss = loss + config.dice_weight * soft_dice_loss(flat_logits, flat_labels, selector)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if config.grad_clip > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(wrapper.parameters(), config.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        step += 1
        window_steps += 1
        losses.append(float(loss.detach()))
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.4f}", p=f"{fraction:.2f}")
        if step % config.log_every == 0 or step == config.iterations:
            now = time.perf_counter()
            log.write(step=step, loss=float(np.mean(losses[-config.log_every:])), lr=scheduler.get_last_lr()[0],
                      bootstrap_p=fraction, it_per_s=window_steps / (now - window_start), elapsed_s=now - started)
            window_start, window_steps = now, 0
        if val is not None and (step % config.val_every == 0 or step == config.iterations):
            improved = False
            if info.is_main:
                from eamstcn.training.validate import validate

                jf = validate(network, val, device, config.val_size)
                wrapper.train()
                log.write(step=step, val_jf=jf)
                bar.write(f"step {step}: validation J&F {jf:.2f}")
                improved = best_jf is None or jf > best_jf
                best_jf = float(jf) if improved else best_jf
            if info.enabled:
                shared = [improved, best_jf]
                torch.distributed.broadcast_object_list(shared, src=0)
                improved, best_jf = shared
            if improved:
                checkpoint(out / "best.pth")
        if step % config.checkpoint_every == 0 or step == last:
            checkpoint(out / "latest.pth")
    bar.close()
    return TrainResult(step=step, losses=losses, best_jf=best_jf, out_dir=out, network=network)

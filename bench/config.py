"""Typed bench configuration, built by the CLI from flags (or by code directly)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

#: Every backend the bench knows, in table order. The first is the baseline.
BACKEND_NAMES = (
    "torch-fp32",
    "torch-fp16",
    "onnxruntime-cpu",
    "onnxruntime-cpu-int8",
    "onnxruntime-cuda-fp32",
    "onnxruntime-cuda-fp16",
    "tensorrt-fp16",
)
BASELINE = "torch-fp32"
#: Rows compared with another row of the same run as well as with the baseline: the
#: INT8 engines against the fp32 engines they were quantized from (mask drift over the
#: whole clip, per-stage speed-ups).
REFERENCES = {"onnxruntime-cpu-int8": "onnxruntime-cpu"}


@dataclass(frozen=True)
class BenchConfig:
    """What to measure. ``None`` sizes and counts mean "pick for this device": a CPU gets
    240x432 and 40 frames (the whole default run takes 3-6 minutes on 2 cores), a GPU
    480x854 and 200 frames."""

    checkpoint: Path | None = None
    engines: Path | None = None
    video: str | None = None
    frames_dir: Path | None = None
    mask: Path | None = None
    size: tuple[int, int] | None = None
    objects: int = 1
    frames_count: int | None = None
    backends: tuple[str, ...] | None = None
    memory_frames: int = 16
    save: Literal["fixed", "adaptive"] = "adaptive"
    warmup: int | None = None
    sweep: Literal["none", "memory", "objects", "both"] = "none"
    device: str | None = None
    seed: int = 2024

    def __post_init__(self) -> None:
        if self.objects < 1:
            raise ValueError(f"--objects must be at least 1, got {self.objects}")
        if self.memory_frames < 2:
            raise ValueError(f"--memory-frames must be at least 2 (the first frame is permanent), got {self.memory_frames}")
        if self.frames_count is not None and self.frames_count < 3:
            raise ValueError(f"--frames-count must be at least 3, got {self.frames_count}")
        if self.warmup is not None and self.warmup < 0:
            raise ValueError(f"--warmup must be >= 0, got {self.warmup}")
        unknown = set(self.backends or ()) - set(BACKEND_NAMES)
        if unknown:
            raise ValueError(f"unknown backend(s) {sorted(unknown)}: choose from {', '.join(BACKEND_NAMES)}")
        if self.video is not None and self.frames_dir is not None:
            raise ValueError("give --video or --frames, not both")

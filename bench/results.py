"""What one backend measured on the bench clip, and the summary statistics it is built from."""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

#: Stage names in pipeline order (as the session reports them); others are appended.
STAGE_ORDER = ("preprocess", "key_encoder", "memory_read", "decoder", "aggregate", "save_decision", "value_encoder", "postprocess")


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in [0, 100]) of a non-empty list."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    position = (len(ordered) - 1) * q / 100
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass(frozen=True)
class StageTiming:
    """Median and p90 over the frames where the stage ran (``calls``); ``per_frame_ms``
    spreads its total over every measured frame (the value encoder runs only on stored
    frames, so its median alone overstates what it costs a stream)."""

    median_ms: float
    p90_ms: float
    calls: int
    per_frame_ms: float

    @classmethod
    def from_samples(cls, samples_ms: list[float], frames: int | None = None) -> "StageTiming":
        frames = frames or len(samples_ms)
        return cls(statistics.median(samples_ms), percentile(samples_ms, 90), len(samples_ms), sum(samples_ms) / frames)


@dataclass
class BackendResult:
    """One row of the bench table. ``status`` is "ok" or "skipped" (with ``reason``)."""

    backend: str
    status: str = "ok"
    model: str = ""  # which network ran (bench.runner.describe_model): the same for every row of a run
    reason: str = ""
    device: str = ""
    precision: str = ""
    step_mode: str = ""  # Session.step_mode: one CUDA graph / eager
    frames: int = 0
    fps: float = float("nan")
    frame_median_ms: float = float("nan")
    frame_p90_ms: float = float("nan")
    stages: dict[str, StageTiming] = field(default_factory=dict)
    outside_networks_fraction: float = float("nan")
    peak_host_mb: float = float("nan")
    peak_device_mb: float = float("nan")
    memory_frames: int = 0
    saved_frames: int = 0
    speedup: float = float("nan")
    iou_mean: float = float("nan")
    iou_min: float = float("nan")
    # Against another row of the same run (config.REFERENCES), e.g. INT8 against fp32:
    reference: str = ""
    reference_speedup: float = float("nan")
    reference_iou_mean: float = float("nan")
    reference_iou_min: float = float("nan")
    stage_speedups: dict[str, float] = field(default_factory=dict)  # stage -> reference median / this median

    @classmethod
    def skipped(cls, backend: str, reason: str) -> "BackendResult":
        return cls(backend=backend, status="skipped", reason=reason)

    def flat(self, stage_names: list[str]) -> dict[str, Any]:
        """One CSV/JSON row: scalar columns, then ``<stage>_median_ms`` / ``<stage>_p90_ms``."""
        row = {key: value for key, value in asdict(self).items() if key not in ("stages", "stage_speedups")}
        for name in stage_names:
            timing = self.stages.get(name)
            row[f"{name}_median_ms"] = timing.median_ms if timing else float("nan")
            row[f"{name}_p90_ms"] = timing.p90_ms if timing else float("nan")
            row[f"{name}_per_frame_ms"] = timing.per_frame_ms if timing else float("nan")
            row[f"{name}_speedup_vs_reference"] = self.stage_speedups.get(name, float("nan"))
        return row


def stage_names(results: list[BackendResult]) -> list[str]:
    """Every stage any backend reported, in pipeline order."""
    seen = {name for result in results for name in result.stages}
    ordered = [name for name in STAGE_ORDER if name in seen]
    return ordered + sorted(seen - set(ordered))

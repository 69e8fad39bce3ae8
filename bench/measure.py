"""Run one backend over the clip through the runtime's Session and measure it honestly.

Warm-up runs on a separate pass and is excluded; per-stage times come from the session's
timer (CUDA events on CUDA, perf_counter on the CPU); end-to-end time includes getting
each frame's label map to the host, synchronised, because that is what a user waits for.
"""

from __future__ import annotations

import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from eamstcn.bench.device_memory import device_memory_mb
from eamstcn.bench.results import BackendResult, StageTiming, percentile
from eamstcn.data.clip_reader import Clip
from eamstcn.runtime.config import MemoryConfig, SaveConfig
from eamstcn.runtime.engines.base import EngineSet
from eamstcn.runtime.session import Session

#: Stages that are the three networks; everything else is "outside the networks".
NETWORK_STAGES = frozenset({"key_encoder", "decoder", "value_encoder"})


@dataclass
class RunRecord:
    """Raw samples of one measured pass (frame 0, the initialisation, is excluded)."""

    labels: list[np.ndarray]
    totals_ms: list[float]
    stages_ms: dict[str, list[float]]
    elapsed_s: float
    saved_frames: int
    memory_frames: int
    peak_host_mb: float
    peak_device_mb: float
    device_memory_source: str = ""
    step_mode: str = ""  # how the steady frames ran (Session.step_mode, after the pass)


def _host_rss_mb() -> float:
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:  # psutil is a bench extra: fall back to the lifetime peak
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_clip(
    engines: EngineSet, clip: Clip, memory: MemoryConfig, save: SaveConfig, frames: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> RunRecord:
    """One pass of a fresh session over ``clip`` with timing on; ``progress(done, total)``
    is called after every frame (the caller decides how often to print)."""
    device = engines.device
    count = len(clip.frames) if frames is None else min(frames, len(clip.frames))
    pin = device.type == "cuda"
    host_frames = [torch.from_numpy(frame) for frame in clip.frames[:count]]
    if pin:
        host_frames = [frame.pin_memory() for frame in host_frames]
    session = Session(engines, memory, save, timing=True)
    first_mask = torch.from_numpy(clip.first_mask)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    labels: list[np.ndarray] = []
    totals: list[float] = []
    stages: dict[str, list[float]] = {}
    saved = 0
    peak_host = _host_rss_mb()
    peak_device, device_source = device_memory_mb(device)

    session.step(host_frames[0], first_mask)
    _sync(device)
    start = time.perf_counter()
    for index in range(1, count):
        probabilities = session.step(host_frames[index], is_last=index == count - 1)
        # syncs: the user's mask. Copied: the session returns its labels in a fixed buffer,
        # which the next frame overwrites (keeping views made every frame equal the last).
        labels.append(session.labels(probabilities).cpu().numpy().copy())
        stats = session.last_stats
        assert stats is not None
        totals.append(stats.total_ms)
        for name, ms in stats.stages.items():
            stages.setdefault(name, []).append(ms)
        saved += int(stats.saved)
        if index % 8 == 0:
            peak_host = max(peak_host, _host_rss_mb())
            peak_device = max(peak_device, device_memory_mb(device)[0])
        if progress is not None:
            progress(index + 1, count)
    _sync(device)
    elapsed = time.perf_counter() - start
    peak_host = max(peak_host, _host_rss_mb())
    # Sampled, not a true peak: a device-wide counter (NVML or cudaMemGetInfo) sees ORT's and
    # TensorRT's memory, which torch.cuda.max_memory_allocated does not.
    peak_device = max(peak_device, device_memory_mb(device)[0])
    return RunRecord(labels, totals, stages, elapsed, saved, session.memory_frames, peak_host, peak_device, device_source, session.step_mode)


def mask_agreement(labels: list[np.ndarray], reference: list[np.ndarray]) -> tuple[float, float]:
    """(mean, minimum) over frames of the mean per-object IoU between two label sequences.

    An object absent from both frames counts as agreement (IoU 1)."""
    scores = []
    for ours, theirs in zip(labels, reference, strict=True):
        ids = sorted((set(np.unique(ours)) | set(np.unique(theirs))) - {0})
        per_object = []
        for object_id in ids:
            a, b = ours == object_id, theirs == object_id
            union = np.logical_or(a, b).sum()
            per_object.append(1.0 if union == 0 else float(np.logical_and(a, b).sum() / union))
        scores.append(float(np.mean(per_object)) if per_object else 1.0)
    return float(np.mean(scores)), float(np.min(scores))


def summarise(backend: str, engines: EngineSet, record: RunRecord) -> BackendResult:
    """Turn raw samples into a table row (speed-up and IoU are filled in by the caller)."""
    frames = len(record.totals_ms)
    total_ms = sum(record.totals_ms)
    network_ms = sum(sum(ms) for name, ms in record.stages_ms.items() if name in NETWORK_STAGES)
    return BackendResult(
        backend=backend,
        device=str(engines.device),
        precision=engines.precision,
        step_mode=record.step_mode,
        frames=frames,
        fps=frames / record.elapsed_s if record.elapsed_s > 0 else float("nan"),
        frame_median_ms=statistics.median(record.totals_ms),
        frame_p90_ms=percentile(record.totals_ms, 90),
        stages={name: StageTiming.from_samples(ms, frames) for name, ms in record.stages_ms.items()},
        outside_networks_fraction=(total_ms - network_ms) / total_ms,
        peak_host_mb=record.peak_host_mb,
        peak_device_mb=record.peak_device_mb,
        memory_frames=record.memory_frames,
        saved_frames=record.saved_frames,
    )

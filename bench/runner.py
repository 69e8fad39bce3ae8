"""The bench: one clip, one mask, every available backend, in one process.

The PyTorch eager fp32 path runs first and is the baseline for speed-up and mask
agreement. Without ``--checkpoint`` a default B1/B1 network with random weights is
built; without ``--engines`` it is exported to a temporary folder first.
"""

from __future__ import annotations

import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from eamstcn.bench.clip import footage_clip, generated_clip
from eamstcn.bench.config import BACKEND_NAMES, BASELINE, REFERENCES, BenchConfig
from eamstcn.bench.measure import mask_agreement, run_clip, summarise
from eamstcn.bench.results import BackendResult
from eamstcn.data.clip_reader import Clip
from eamstcn.runtime.config import MemoryConfig, SaveConfig
from eamstcn.runtime.engines.base import EngineSet
from eamstcn.runtime.engines.factory import open_engines

Notify = Callable[[str], None]

#: name -> (runtime backend, device type, precision)
_SPECS: dict[str, tuple[str, str, str]] = {
    "torch-fp32": ("torch", "best", "fp32"),
    "torch-fp16": ("torch", "cuda", "fp16"),
    "onnxruntime-cpu": ("onnxruntime", "cpu", "fp32"),
    "onnxruntime-cpu-int8": ("onnxruntime", "cpu", "int8"),
    "onnxruntime-cuda-fp32": ("onnxruntime", "cuda", "fp32"),
    "onnxruntime-cuda-fp16": ("onnxruntime", "cuda", "fp16"),
    "tensorrt-fp16": ("tensorrt", "cuda", "fp16"),
}


@dataclass
class BenchReport:
    header: dict[str, Any]
    results: list[BackendResult]
    sweeps: dict[str, Any] = field(default_factory=dict)


def _device(requested: str | None) -> torch.device:
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
        else:
            name = platform.processor() or platform.machine()
    except OSError:
        name = platform.processor() or platform.machine()
    return f"CPU {name} ({torch.get_num_threads()} threads)"


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for module in ("onnxruntime", "tensorrt", "timm"):
        try:
            versions[module] = __import__(module).__version__
        except ImportError:
            versions[module] = "not installed"
    from eamstcn import __version__

    versions["eamstcn"] = __version__
    return versions


def _unavailable(name: str, device: torch.device, engines_dir: Path | None, checkpoint: Path | None) -> str | None:
    """Why ``name`` cannot run here, or None."""
    backend, wanted, precision = _SPECS[name]
    if wanted == "cuda" and device.type != "cuda":
        return "needs CUDA"
    if backend == "torch":
        if checkpoint is None:
            return "needs --checkpoint"
        try:
            import timm  # noqa: F401
        except ImportError:
            return "timm not installed (pip install 'eamstcn[model]')"
        return None
    if engines_dir is None:
        return "no engines folder"
    if backend == "onnxruntime":
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return "onnxruntime not installed"
        if wanted == "cuda":
            from eamstcn.runtime.engines.onnxruntime_engine import cuda_provider_available

            if not cuda_provider_available():
                return "onnxruntime has no CUDA provider (pip install 'eamstcn[gpu]')"
        if precision == "int8" and "int8" not in _bundle_precisions(engines_dir):
            return "the bundle has no int8 engines (eamstcn-export --int8)"
        return None
    from eamstcn.runtime.engines.tensorrt_engine import tensorrt_available

    if not tensorrt_available():
        return "tensorrt not installed"
    return None


def _bundle_precisions(engines_dir: Path) -> set[str]:
    from eamstcn.runtime.manifest import load_manifest

    return load_manifest(engines_dir).precisions("onnx")


def _wants_int8(config: BenchConfig, device: torch.device) -> bool:
    """Export INT8 engines for the temporary bundle: on a CPU by default, or when named."""
    if config.backends is not None:
        return "onnxruntime-cpu-int8" in config.backends
    return device.type == "cpu"


def _open(name: str, device: torch.device, engines_dir: Path | None, checkpoint: Path | None) -> EngineSet:
    backend, wanted, precision = _SPECS[name]
    target = device if wanted in ("best", "cuda") else torch.device("cpu")
    return open_engines(engines_dir=engines_dir, checkpoint=checkpoint, backend=backend, device=target, precision=precision)


def describe_model(checkpoint: Path | None, engines: Path | None, random_seed: int | None = None) -> str:
    """Which network the bench ran, for the table, CSV and JSON: the bundled model by name,
    a checkpoint or a bundle's source checkpoint by sha256, or the random-weight default."""
    from eamstcn.fileio import file_sha256

    if random_seed is not None:
        return f"random-weight default B1/B1 (seed {random_seed}: speed and engine agreement only)"
    if checkpoint is not None:
        try:
            digest = file_sha256(checkpoint)
        except OSError:  # missing or unreadable: opening it says so in one line, later
            return f"checkpoint {checkpoint}"
        try:
            from eamstcn.default_model import bundled_model

            bundled = bundled_model(verify=False)
            if bundled.sha256 == digest:
                return f"bundled model {bundled.name} (sha256 {digest[:12]})"
        except ValueError:
            pass
        return f"checkpoint {checkpoint.name} (sha256 {digest[:12]})"
    if engines is not None:
        from eamstcn.runtime.manifest import load_manifest

        source = load_manifest(engines).raw.get("checkpoint") or {}
        return f"engines {engines} (from {source.get('file', '?')}, sha256 {str(source.get('sha256', '?'))[:12]})"
    return "unknown"


def _prepare(config: BenchConfig, device: torch.device, workdir: Path, notify: Notify) -> tuple[Path | None, Path | None, tuple[int, int], str]:
    """(checkpoint, engines folder, frame size, which model): given, or built into ``workdir``."""
    checkpoint = config.checkpoint
    size = config.size or ((480, 854) if device.type == "cuda" else (240, 432))
    if config.engines is not None:
        from eamstcn.runtime.manifest import load_manifest

        size = load_manifest(config.engines).frame_size
        return checkpoint, config.engines, size, describe_model(checkpoint, config.engines)
    model = describe_model(checkpoint, None) if checkpoint is not None else describe_model(None, None, config.seed)
    if checkpoint is None:
        from eamstcn.checkpoint import save_checkpoint
        from eamstcn.network import EamStcn

        notify("building the default B1/B1 EamStcn with random weights (pass --checkpoint for yours)")
        torch.manual_seed(config.seed)
        checkpoint = workdir / "random-b1.pth"
        save_checkpoint(checkpoint, EamStcn())
    from eamstcn.export.bundle import ExportConfig, export_bundle

    notify(f"exporting engines at {size[0]}x{size[1]} to a temporary folder")
    engines_dir = workdir / "engines"
    export_bundle(
        ExportConfig(checkpoint=checkpoint, out=engines_dir, fp16=device.type == "cuda", frame_size=size, max_objects=max(4, config.objects),
                     int8=_wants_int8(config, device)),
        progress=lambda message: notify(f"  export: {message}"),
    )
    return checkpoint, engines_dir, size, model


def _clip(config: BenchConfig, size: tuple[int, int], count: int, objects: int) -> Clip:
    if config.video is not None or config.frames_dir is not None:
        return footage_clip(config.video, config.frames_dir, config.mask, count)
    return generated_clip(size[0], size[1], count, objects, config.seed)


def _measure(
    names: list[str], clip: Clip, device: torch.device, engines_dir: Path | None, checkpoint: Path | None,
    memory: MemoryConfig, save: SaveConfig, warmup: int, notify: Notify,
) -> list[BackendResult]:
    results: list[BackendResult] = []
    reference = None
    baseline_fps = None
    records: dict[str, tuple[BackendResult, list]] = {}  # name -> (row, labels), for REFERENCES
    for name in names:
        reason = _unavailable(name, device, engines_dir, checkpoint)
        if reason is not None:
            results.append(BackendResult.skipped(name, reason))
            continue
        try:
            engines = _open(name, device, engines_dir, checkpoint)
        except ValueError as error:  # EngineError / ManifestError: a reason, not a crash
            results.append(BackendResult.skipped(name, str(error)))
            continue
        with engines:
            notify(f"{name}: {engines.describe()}")
            if warmup:
                notify(f"{name}: warming up ({warmup} frames, not timed)")
                run_clip(engines, clip, memory, save, frames=warmup + 1)
            notify(f"{name}: measuring {len(clip.frames)} frames")
            record = run_clip(engines, clip, memory, save, progress=_every(PROGRESS_EVERY_S, name, notify))
        result = summarise(name, engines, record)
        if name == BASELINE:
            reference, baseline_fps = record.labels, result.fps
        if reference is not None:
            result.iou_mean, result.iou_min = mask_agreement(record.labels, reference)
        if baseline_fps:
            result.speedup = result.fps / baseline_fps
        records[name] = (result, record.labels)
        if name in REFERENCES and REFERENCES[name] in records:
            compare_with_reference(result, record.labels, *records[REFERENCES[name]], REFERENCES[name])
        notify(f"{name}: {result.fps:.2f} FPS, median {result.frame_median_ms:.1f} ms/frame")
        results.append(result)
    return results


#: Seconds between two progress lines while one backend is measured.
PROGRESS_EVERY_S = 10.0


def _every(seconds: float, name: str, notify: Notify) -> Callable[[int, int], None]:
    """A ``progress(done, total)`` callback that says where the measurement is, at most
    every ``seconds``: a long backend must not look like a hang."""
    last = [time.monotonic()]

    def progress(done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] >= seconds:
            last[0] = now
            notify(f"{name}: frame {done}/{total}")

    return progress


def compare_with_reference(result: BackendResult, labels: list, reference: BackendResult, reference_labels: list, name: str) -> None:
    """Fill ``result``'s columns against another row of the same run (INT8 against fp32):
    mask IoU over every measured frame, end-to-end and per-stage speed-ups (medians)."""
    result.reference = name
    result.reference_iou_mean, result.reference_iou_min = mask_agreement(labels, reference_labels)
    result.reference_speedup = result.fps / reference.fps if reference.fps > 0 else float("nan")
    result.stage_speedups = {
        stage: reference.stages[stage].median_ms / timing.median_ms
        for stage, timing in result.stages.items()
        if stage in reference.stages and timing.median_ms > 0
    }


def _sweeps(config: BenchConfig, names: list[str], device: torch.device, engines_dir: Path | None,
            checkpoint: Path | None, size: tuple[int, int], count: int, warmup: int, notify: Notify) -> dict[str, Any]:
    """FPS against stored memory frames (1..C) and against the object count (1..4)."""
    sweeps: dict[str, Any] = {}
    if config.sweep in ("memory", "both"):
        # Save every frame into a bank of capacity c, and time the frames that do not
        # need the value encoder: the cost of tracking with c frames in memory.
        capacities = sorted({c for c in (2, 4, 8, 16, 32, 64) if c <= config.memory_frames} | {config.memory_frames})
        clip = _clip(config, size, count, config.objects)
        fps: dict[str, list[float]] = {}
        for capacity in capacities:
            notify(f"sweep: memory of {capacity} frames")
            rows = _measure(names, clip, device, engines_dir, checkpoint, MemoryConfig(capacity=capacity),
                            SaveConfig(mode="fixed", save_every=1), warmup, notify)
            for row in rows:
                if row.status == "ok":
                    tracking = row.frame_median_ms - (row.stages["value_encoder"].median_ms if "value_encoder" in row.stages else 0.0)
                    fps.setdefault(row.backend, []).append(1000.0 / tracking)
        sweeps["memory"] = {"label": "memory frames", "x": capacities, "fps": fps}
    if config.sweep in ("objects", "both"):
        counts = [1, 2, 3, 4]
        fps = {}
        for objects in counts:
            notify(f"sweep: {objects} object(s)")
            clip = _clip(config, size, count, objects)
            rows = _measure(names, clip, device, engines_dir, checkpoint, MemoryConfig(capacity=config.memory_frames),
                            SaveConfig(mode=config.save), warmup, notify)
            for row in rows:
                if row.status == "ok":
                    fps.setdefault(row.backend, []).append(row.fps)
        sweeps["objects"] = {"label": "objects", "x": counts, "fps": fps}
    return sweeps


def run_bench(config: BenchConfig, notify: Notify = lambda m: print(m, file=sys.stderr)) -> BenchReport:
    """Measure every requested backend on one clip; see the module docstring."""
    device = _device(config.device)
    count = config.frames_count or (200 if device.type == "cuda" else 40)
    warmup = config.warmup if config.warmup is not None else (20 if device.type == "cuda" else 3)
    # Table order, whatever order --backends gave: a row compared with another row of the
    # run (REFERENCES) must come after it.
    requested = [name for name in BACKEND_NAMES if name in (config.backends or BACKEND_NAMES)]
    if BASELINE not in requested:
        notify(f"note: {BASELINE} not requested: no speed-up or IoU agreement figures")
    with tempfile.TemporaryDirectory(prefix="eamstcn-bench-") as temp:
        # Real footage and its mask first: a bad --video or --mask is found in a second, not
        # after minutes of export and calibration (footage does not depend on the size).
        footage = config.video is not None or config.frames_dir is not None
        clip = footage_clip(config.video, config.frames_dir, config.mask, count) if footage else None
        checkpoint, engines_dir, size, model = _prepare(config, device, Path(temp), notify)
        clip = clip or _clip(config, size, count, config.objects)
        memory = MemoryConfig(capacity=config.memory_frames)
        save = SaveConfig(mode=config.save)
        names = requested
        skipped_cpu = []
        if config.backends is None and device.type == "cuda":
            # The CPU provider at GPU sizes takes minutes and says nothing about the GPU.
            cpu_rows = ("onnxruntime-cpu", "onnxruntime-cpu-int8")
            names = [name for name in requested if name not in cpu_rows]
            skipped_cpu = [BackendResult.skipped(name, "CPU provider left out on a CUDA machine; name it in --backends to run it") for name in cpu_rows]
        results = _measure(names, clip, device, engines_dir, checkpoint, memory, save, warmup, notify) + skipped_cpu
        sweeps = {}
        if config.sweep != "none":
            sweeps = _sweeps(config, [r.backend for r in results if r.status == "ok"], device, engines_dir, checkpoint, size, count, warmup, notify)
    for result in results:
        result.model = model
    header = {
        "model": model,
        "device": device_name(device),
        "versions": ", ".join(f"{k} {v}" for k, v in library_versions().items()),
        "clip": f"{clip.name}, {len(clip.frames)} frames of {clip.frames.shape[1]}x{clip.frames.shape[2]}",
        "size": f"{size[0]}x{size[1]} (engines input, padded to multiples of 16)",
        "objects": clip.num_objects,
        "memory": f"capacity {config.memory_frames} frames, {config.save} save, top-20",
        "warmup": f"{warmup} frames (separate pass, excluded)",
    }
    if device.type == "cuda":
        from eamstcn.bench.device_memory import device_memory_mb

        header["device memory"] = f"dev MB sampled every 8 frames from {device_memory_mb(device)[1]}"
    return BenchReport(header, results, sweeps)

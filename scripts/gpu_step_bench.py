"""Frame-step numbers of the runtime on one device: paths, memory sizes, read kernels.

Part of the GPU acceptance (scripts/gpu_acceptance.sh); runs on the CPU too (a smoke
run). For each path (backend, precision, CUDA graphs on/off) and memory capacity, a
fresh Session fills its memory, then steps ``--frames`` frames; reported: median and p90
step time (CUDA events on CUDA), throughput, host syncs and caching-allocator
allocations per steady frame, and, separately, the memory read alone with the torch
and the Triton kernel at each capacity.

    python scripts/gpu_step_bench.py --checkpoint ck.pth --engines engines --out results
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from eamstcn.runtime.config import MemoryConfig, SaveConfig
from eamstcn.runtime.engines.factory import open_engines
from eamstcn.runtime.memory import MemoryBank
from eamstcn.runtime.session import Session

PATHS = [
    # backend, precision, CUDA graphs
    ("torch", "fp32", False),
    ("torch", "fp16", False),
    ("torch", "fp16", True),
    ("onnxruntime", "fp32", False),
    ("onnxruntime", "fp16", False),
    ("onnxruntime", "fp16", True),
]


def _clip(size: tuple[int, int], count: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    from eamstcn.data.synth import generate_sequence

    clip = generate_sequence(seed=2024, frames=count, height=size[0], width=size[1], objects=1)
    return [torch.from_numpy(frame) for frame in clip.frames], torch.from_numpy(clip.masks[0])


class _SyncCounter:
    """Counts CUDA host syncs via torch's sync debug mode set to warn (warnings caught)."""

    def __enter__(self) -> _SyncCounter:
        import warnings

        self._catch = warnings.catch_warnings(record=True)
        self.records = self._catch.__enter__()
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        return self

    def __exit__(self, *exc: object) -> None:
        torch.cuda.set_sync_debug_mode("default")
        self._catch.__exit__(*exc)

    @property
    def count(self) -> int:
        return sum("synchroniz" in str(record.message) for record in self.records)


def run_path(engines_dir: Path, checkpoint: Path, device: torch.device, backend: str, precision: str, graphs: bool,
             capacity: int, frames: list[torch.Tensor], mask: torch.Tensor, measured: int) -> dict:  # fmt: skip
    cuda = device.type == "cuda"
    engines = open_engines(engines_dir, checkpoint, backend=backend, device=str(device), precision=precision)
    try:
        frames = [frame.to(device) for frame in frames]
        # Fixed saving every 2nd frame fills the memory; reads are full-size from then on.
        session = Session(engines, MemoryConfig(capacity=capacity), SaveConfig(mode="fixed", save_every=2), cuda_graphs=graphs if cuda else False)
        order = [t % len(frames) if (t // len(frames)) % 2 == 0 else len(frames) - 1 - t % len(frames) for t in range(2 * capacity + 4 + measured)]
        session.step(frames[0], mask)
        for t in order[1 : 2 * capacity + 4]:
            session.step(frames[t])
        if cuda:
            torch.cuda.synchronize(device)
        times: list[float] = []
        allocations = torch.cuda.memory_stats(device)["allocation.all.allocated"] if cuda else 0
        syncs = 0
        started = time.perf_counter()
        if cuda:
            events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(measured)]
            with _SyncCounter() as counter:
                for (begin, end), t in zip(events, order[2 * capacity + 4 :]):
                    begin.record()
                    session.step(frames[t])
                    end.record()
                syncs = counter.count
            torch.cuda.synchronize(device)
            elapsed = time.perf_counter() - started
            times = [begin.elapsed_time(end) for begin, end in events]
            allocations = torch.cuda.memory_stats(device)["allocation.all.allocated"] - allocations
        else:
            for t in order[2 * capacity + 4 :]:
                tick = time.perf_counter()
                session.step(frames[t])
                times.append((time.perf_counter() - tick) * 1000)
            elapsed = time.perf_counter() - started
        return {
            "backend": backend, "precision": precision, "cuda_graphs": session.cuda_graphs, "memory_frames": capacity,
            "read_kernel": session._core.bank.read_kernel,  # noqa: SLF001
            "median_ms": statistics.median(times), "p90_ms": float(np.percentile(times, 90)), "fps": measured / elapsed,
            "syncs_per_frame": syncs / measured, "allocations_per_frame": allocations / measured,
            "speculative_stores": session.speculative_stores, "stored": session.stored_frames,
        }  # fmt: skip
    finally:
        engines.close()


def time_reads(device: torch.device, size: tuple[int, int], capacities: list[int], dtype: torch.dtype) -> list[dict]:
    """The memory read alone (K=1, Ck 64, Cv 512), full bank, per kernel and capacity."""
    from eamstcn.ops import padded_size

    height, width = (s // 16 for s in padded_size(*size))
    rows = []
    for capacity in capacities:
        for kernel in ("torch", "triton"):
            try:
                bank = MemoryBank(MemoryConfig(capacity=capacity, read_kernel=kernel), 64, 512, height, width, 1, device=device, dtype=dtype)
            except ValueError as error:
                rows.append({"memory_frames": capacity, "kernel": kernel, "skipped": str(error)})
                continue
            bank.fixed_read_shape = True
            generator = torch.Generator().manual_seed(capacity)
            for _ in range(capacity):
                bank.add(torch.randn(1, 64, height, width, generator=generator).to(device, dtype), torch.randn(1, 512, height, width, generator=generator).to(device, dtype))
            query = torch.randn(1, 64, height, width, generator=generator).to(device, dtype)
            samples = []
            for index in range(60):
                if device.type == "cuda":
                    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    begin.record()
                    bank.read(query)
                    end.record()
                    torch.cuda.synchronize(device)
                    ms = begin.elapsed_time(end)
                else:
                    tick = time.perf_counter()
                    bank.read(query)
                    ms = (time.perf_counter() - tick) * 1000
                if index >= 10:
                    samples.append(ms)
            rows.append({"memory_frames": capacity, "kernel": kernel, "median_ms": statistics.median(samples), "p90_ms": float(np.percentile(samples, 90))})
    return rows


def _markdown(header: dict, steps: list[dict], reads: list[dict]) -> str:
    lines = [f"# Frame step, {header['device']}", "", "```", json.dumps(header, indent=1), "```", ""]
    lines += ["| backend | precision | graphs | memory | read | median ms | p90 ms | FPS | syncs/frame | allocs/frame | speculative stores |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for row in steps:
        if "skipped" in row:
            lines.append(f"| {row['backend']} | {row['precision']} | {row['cuda_graphs']} | {row['memory_frames']} | skipped: {row['skipped']} |")
            continue
        lines.append(
            f"| {row['backend']} | {row['precision']} | {row['cuda_graphs']} | {row['memory_frames']} | {row['read_kernel']} | "
            f"{row['median_ms']:.2f} | {row['p90_ms']:.2f} | {row['fps']:.1f} | {row['syncs_per_frame']:.2f} | "
            f"{row['allocations_per_frame']:.2f} | {row['speculative_stores']} |"
        )
    lines += ["", "| memory frames | read kernel | median ms | p90 ms |", "| --- | --- | --- | --- |"]
    for row in reads:
        if "skipped" in row:
            lines.append(f"| {row['memory_frames']} | {row['kernel']} | skipped: {row['skipped']} | |")
        else:
            lines.append(f"| {row['memory_frames']} | {row['kernel']} | {row['median_ms']:.3f} | {row['p90_ms']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--engines", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--frames", type=int, default=100, help="measured frames per path")
    parser.add_argument("--capacities", default="16,64")
    parser.add_argument("--paths", default="all", help="comma-separated backend:precision:graphs, or all")
    args = parser.parse_args(argv)

    from eamstcn.runtime.manifest import load_manifest

    device = torch.device(args.device)
    size = load_manifest(args.engines).frame_size
    capacities = [int(c) for c in args.capacities.split(",")]
    paths = PATHS if args.paths == "all" else [(b, p, g == "graphs") for b, p, g in (item.split(":") for item in args.paths.split(","))]
    if device.type != "cuda":
        paths = [(b, "fp32", False) for b, p, g in paths if p == "fp32" and not g]
    frames, mask = _clip(size, 48)
    header = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "size": size, "objects": 1, "measured_frames": args.frames,
        "save": "fixed every 2nd frame (fills the memory)",
    }  # fmt: skip
    try:
        import onnxruntime

        header["onnxruntime"] = f"{onnxruntime.__version__} {onnxruntime.get_available_providers()}"
    except ImportError:
        header["onnxruntime"] = "not installed"
    steps = []
    for backend, precision, graphs in paths:
        for capacity in capacities:
            print(f"{backend} {precision} graphs={graphs} memory={capacity}", file=sys.stderr, flush=True)
            try:
                steps.append(run_path(args.engines, args.checkpoint, device, backend, precision, graphs, capacity, frames, mask, args.frames))
            except Exception as error:  # noqa: BLE001 - one broken path must not hide the others
                steps.append({"backend": backend, "precision": precision, "cuda_graphs": graphs, "memory_frames": capacity,
                              "skipped": f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"})  # fmt: skip
    reads = time_reads(device, size, capacities, torch.float16 if device.type == "cuda" else torch.float32)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "step_bench.json").write_text(json.dumps({"header": header, "steps": steps, "reads": reads}, indent=1))
    text = _markdown(header, steps, reads)
    (args.out / "step_bench.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

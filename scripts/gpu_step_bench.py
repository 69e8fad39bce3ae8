"""Frame-step numbers of the runtime on one device: paths, memory sizes, read kernels.

Part of the GPU acceptance (scripts/gpu_acceptance.sh); runs on the CPU too (a smoke
run). For each path (backend, precision, CUDA graphs on/off) and memory capacity, a
fresh Session fills its memory, then steps ``--frames`` frames; reported: median and p90
step time (CUDA events on CUDA), throughput, host syncs and caching-allocator
allocations per steady frame, stores (value-encoder runs) per frame and how many ran
before the host knew the decision, and the step mode (one CUDA graph / eager).
Per-stage times come from a separate eager pass (``--breakdown``), labelled as such:
per-stage timing cannot see inside a graph. ``--reads`` times the memory read alone
with the torch and the Triton kernel at each capacity, the kernels alternated.

The default paths are the acceptance's: PyTorch eager fp32 and the graphed fp16 step,
from a checkpoint alone (no export); ``--paths`` adds ONNX Runtime rows (``--engines``).

    python scripts/gpu_step_bench.py --checkpoint ck.pth --out results --size 480x854
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
from eamstcn.runtime.cuda_graphs import ONE_GRAPH
from eamstcn.runtime.engines.factory import open_engines
from eamstcn.runtime.memory import MemoryBank
from eamstcn.runtime.session import Session

PATHS = [
    # backend, precision, CUDA graphs
    ("torch", "fp32", False),
    ("torch", "fp16", True),
]
ALL_PATHS = [*PATHS, ("torch", "fp16", False), ("onnxruntime", "fp32", False), ("onnxruntime", "fp16", False), ("onnxruntime", "fp16", True)]


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


def run_path(engines_dir: Path | None, checkpoint: Path, device: torch.device, backend: str, precision: str, graphs: bool,
             capacity: int, frames: list[torch.Tensor], mask: torch.Tensor, measured: int, size: tuple[int, int]) -> dict:  # fmt: skip
    cuda = device.type == "cuda"
    bundle = engines_dir if backend != "torch" else None
    engines = open_engines(bundle, checkpoint, backend=backend, device=str(device), precision=precision, frame_size=size)
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
        store_runs, speculative, writes = session.store_runs, session.speculative_stores, session.stored_frames
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
        stored = session.stored_frames - writes
        # Value-encoder runs: those the host enqueued, plus, in the one-graph step, those
        # its conditional node ran (exactly the frames stored, read after the timing).
        in_graph = stored if session.step_mode == ONE_GRAPH else 0
        return {
            "backend": backend, "precision": precision, "cuda_graphs": session.cuda_graphs, "memory_frames": capacity,
            "step_mode": session.step_mode, "notes": session.notes,
            "read_kernel": session._core.bank.read_kernel,  # noqa: SLF001
            "read_kernel_note": session._core.bank.read_kernel_note,  # noqa: SLF001
            "median_ms": statistics.median(times), "p90_ms": float(np.percentile(times, 90)), "fps": measured / elapsed,
            "syncs_per_frame": syncs / measured, "allocations_per_frame": allocations / measured,
            "stores_per_frame": (session.store_runs - store_runs + in_graph) / measured,
            "stored_per_frame": stored / measured,
            "speculative_stores": session.speculative_stores - speculative,
        }  # fmt: skip
    finally:
        engines.close()


def time_reads(device: torch.device, size: tuple[int, int], capacities: list[int], dtype: torch.dtype, repeats: int = 60) -> list[dict]:
    """The memory read alone (K=1, Ck 64, Cv 512), full bank, per kernel and capacity;
    the kernels' reads alternate (back to back), so both see the same clocks."""
    from eamstcn.ops import padded_size

    height, width = (s // 16 for s in padded_size(*size))
    rows = []
    for capacity in capacities:
        banks, samples = {}, {}
        generator = torch.Generator().manual_seed(capacity)
        keys = [torch.randn(1, 64, height, width, generator=generator).to(device, dtype) for _ in range(capacity)]
        values = [torch.randn(1, 512, height, width, generator=generator).to(device, dtype) for _ in range(capacity)]
        query = torch.randn(1, 64, height, width, generator=generator).to(device, dtype)
        for kernel in ("torch", "triton"):
            try:
                bank = MemoryBank(MemoryConfig(capacity=capacity, read_kernel=kernel), 64, 512, height, width, 1, device=device, dtype=dtype)
            except (ValueError, RuntimeError) as error:
                rows.append({"memory_frames": capacity, "kernel": kernel, "skipped": str(error).splitlines()[0]})
                continue
            bank.fixed_read_shape = True
            for key, value in zip(keys, values):
                bank.add(key, value)
            banks[kernel], samples[kernel] = bank, []
        for index in range(repeats):
            for kernel, bank in banks.items():
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
                if index >= min(10, repeats // 3):
                    samples[kernel].append(ms)
        for kernel, bank in banks.items():
            rows.append({"memory_frames": capacity, "kernel": kernel, "median_ms": statistics.median(samples[kernel]),
                         "p90_ms": float(np.percentile(samples[kernel], 90)), "note": bank.read_kernel_note or ""})  # fmt: skip
        del banks
    return rows


def eager_breakdown(checkpoint: Path, device: torch.device, precision: str, capacity: int, frames: list[torch.Tensor],
                    mask: torch.Tensor, measured: int, size: tuple[int, int]) -> dict:  # fmt: skip
    """Per-stage medians from a separate eager pass with timing on (not the mode users run)."""
    engines = open_engines(None, checkpoint, backend="torch", device=str(device), precision=precision, frame_size=size)
    try:
        session = Session(engines, MemoryConfig(capacity=capacity), SaveConfig(mode="fixed", save_every=2), timing=True, cuda_graphs=False)
        session.step(frames[0].to(device), mask)
        stages: dict[str, list[float]] = {}
        for t in range(1, 2 * capacity + 4 + measured):
            session.step(frames[t % len(frames)].to(device))
            if t >= 2 * capacity + 4 and session.last_stats is not None:
                for name, ms in session.last_stats.stages.items():
                    stages.setdefault(name, []).append(ms)
        return {"precision": precision, "memory_frames": capacity, "stages_median_ms": {n: statistics.median(v) for n, v in stages.items()}}
    finally:
        engines.close()


def _markdown(header: dict, steps: list[dict], reads: list[dict], breakdown: list[dict]) -> str:
    lines = [f"# Frame step, {header['device']}", "", "```", json.dumps(header, indent=1), "```", ""]
    lines += ["| backend | precision | step mode | memory | read | median ms | p90 ms | FPS | syncs/frame | allocs/frame | stores/frame | stored/frame | speculative |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for row in steps:
        if "skipped" in row:
            lines.append(f"| {row['backend']} | {row['precision']} | graphs={row['cuda_graphs']} | {row['memory_frames']} | skipped: {row['skipped']} |")
            continue
        lines.append(
            f"| {row['backend']} | {row['precision']} | {row['step_mode']} | {row['memory_frames']} | {row['read_kernel']} | "
            f"{row['median_ms']:.2f} | {row['p90_ms']:.2f} | {row['fps']:.1f} | {row['syncs_per_frame']:.2f} | "
            f"{row['allocations_per_frame']:.2f} | {row['stores_per_frame']:.2f} | {row['stored_per_frame']:.2f} | {row['speculative_stores']} |"
        )
    notes = sorted({note for row in steps for note in row.get("notes", [])} | {row["read_kernel_note"] for row in steps if row.get("read_kernel_note")})
    lines += [f"- {note}" for note in notes]
    lines += ["", "Memory read alone (kernels alternated):", "", "| memory frames | read kernel | median ms | p90 ms |", "| --- | --- | --- | --- |"]
    for row in reads:
        if "skipped" in row:
            lines.append(f"| {row['memory_frames']} | {row['kernel']} | skipped: {row['skipped']} | |")
        else:
            lines.append(f"| {row['memory_frames']} | {row['kernel']} | {row['median_ms']:.3f} | {row['p90_ms']:.3f} |")
    for row in breakdown:
        lines += ["", f"Eager breakdown (separate pass, timing on, no graphs), {row['precision']}, memory {row['memory_frames']}:", ""]
        lines += [f"- {name}: {ms:.2f} ms" for name, ms in row.get("stages_median_ms", {}).items()]
        if "skipped" in row:
            lines.append(f"- skipped: {row['skipped']}")
    return "\n".join(lines) + "\n"


def _one_line(error: BaseException) -> str:
    return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--engines", type=Path, default=None, help="a bundle, for ONNX Runtime paths")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", default="480x854", help="HxW frames (the bundle's size when --engines is given)")
    parser.add_argument("--frames", type=int, default=100, help="measured frames per path")
    parser.add_argument("--capacities", default="16,64")
    parser.add_argument("--paths", default="default", help="default, all, or comma-separated backend:precision:graphs|eager")
    parser.add_argument("--steps", default="paths,reads,breakdown", help="which parts to run: paths, reads, breakdown")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if args.engines is not None:
        from eamstcn.runtime.manifest import load_manifest

        size = load_manifest(args.engines).frame_size
    else:
        height, width = args.size.lower().split("x")
        size = (int(height), int(width))
    capacities = [int(c) for c in args.capacities.split(",")]
    chosen = {"default": PATHS, "all": ALL_PATHS}
    paths = chosen.get(args.paths) or [(b, p, g == "graphs") for b, p, g in (item.split(":") for item in args.paths.split(","))]
    if device.type != "cuda":
        paths = [(b, "fp32", False) for b, p, g in paths if p == "fp32" and not g]
    steps_wanted = set(args.steps.split(","))
    frames, mask = _clip(size, 48)
    header = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "cuda": torch.version.cuda, "size": size, "objects": 1, "measured_frames": args.frames,
        "save": "fixed every 2nd frame (fills the memory)",
    }  # fmt: skip
    try:
        import triton

        header["triton"] = triton.__version__
    except ImportError:
        header["triton"] = "not installed"
    try:
        import onnxruntime

        header["onnxruntime"] = f"{onnxruntime.__version__} {onnxruntime.get_available_providers()}"
    except ImportError:
        header["onnxruntime"] = "not installed"
    steps, reads, breakdown = [], [], []
    args.out.mkdir(parents=True, exist_ok=True)

    def write() -> str:  # after every part: a step killed by its time limit keeps what it measured
        (args.out / "step_bench.json").write_text(json.dumps({"header": header, "steps": steps, "reads": reads, "breakdown": breakdown}, indent=1))
        text = _markdown(header, steps, reads, breakdown)
        (args.out / "step_bench.md").write_text(text)
        return text

    if "paths" in steps_wanted:
        for backend, precision, graphs in paths:
            for capacity in capacities:
                print(f"{backend} {precision} graphs={graphs} memory={capacity}", file=sys.stderr, flush=True)
                try:
                    steps.append(run_path(args.engines, args.checkpoint, device, backend, precision, graphs, capacity, frames, mask, args.frames, size))
                except Exception as error:  # noqa: BLE001 - one broken path must not hide the others
                    steps.append({"backend": backend, "precision": precision, "cuda_graphs": graphs, "memory_frames": capacity, "skipped": _one_line(error)})
                write()
    if "reads" in steps_wanted:
        print("memory reads", file=sys.stderr, flush=True)
        reads.extend(time_reads(device, size, capacities, torch.float16 if device.type == "cuda" else torch.float32))
        write()
    if "breakdown" in steps_wanted:
        precision = "fp16" if device.type == "cuda" else "fp32"
        print(f"eager breakdown {precision}", file=sys.stderr, flush=True)
        try:
            breakdown.append(eager_breakdown(args.checkpoint, device, precision, capacities[0], frames, mask, min(args.frames, 30), size))
        except Exception as error:  # noqa: BLE001
            breakdown.append({"precision": precision, "memory_frames": capacities[0], "skipped": _one_line(error)})
    print(write())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Where INT8 gains and loses time, per ONNX Runtime op type: ``python -m eamstcn.bench.op_profile``.

Runs every graph of a bundle in fp32 and in INT8 on the same realistic inputs (the
generated calibration clip through the fp32 pipeline, :mod:`eamstcn.export.calibration`)
with ONNX Runtime's profiler on, and sums kernel time per op type (``QLinearConv``,
``Conv``, ``QuantizeLinear``...). The op types differ between the two files (ONNX Runtime
fuses DequantizeLinear -> Conv -> QuantizeLinear into QLinearConv), so the table shows
both sides per graph with the share of the graph's time, not a one-to-one pairing.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

from eamstcn.graph_spec import GRAPHS

Feeds = dict[str, np.ndarray]


def profile_op_types(model: Path, feeds: list[Feeds], threads: int, repeats: int = 3) -> dict[str, float]:
    """Mean milliseconds per run spent in each op type (ONNX Runtime CPU, ``threads`` threads)."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="eamstcn-profile-") as temp:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        warm = ort.InferenceSession(str(model), sess_options=options, providers=["CPUExecutionProvider"])
        warm.run(None, feeds[0])  # the first run allocates and is not what a stream sees
        del warm
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(temp, "profile")
        session = ort.InferenceSession(str(model), sess_options=options, providers=["CPUExecutionProvider"])
        session.run(None, feeds[0])
        runs = 0
        for _ in range(repeats):
            for item in feeds:
                session.run(None, item)
                runs += 1
        events = json.loads(Path(session.end_profiling()).read_text())
    totals: dict[str, float] = defaultdict(float)
    for event in events:
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            totals[event["args"]["op_name"]] += event["dur"] / 1000.0
    # The first profiled run (before the loop) is included in the file; divide by all runs.
    return {op: ms / (runs + 1) for op, ms in sorted(totals.items(), key=lambda item: -item[1])}


def profile_bundle(engines: Path, threads: int = 2, frames: int = 8, repeats: int = 2) -> dict[str, dict[str, dict[str, float]]]:
    """graph -> {"fp32": {op: ms}, "int8": {op: ms}} for a bundle with INT8 files."""
    from eamstcn.export.calibration import collect, ort_runner
    from eamstcn.export.calibration_source import generated_source
    from eamstcn.export.quantize import cpu_session
    from eamstcn.runtime.manifest import load_manifest

    manifest = load_manifest(engines)
    if "int8" not in manifest.precisions("onnx"):
        raise ValueError(f"{engines} has no int8 files: export with eamstcn-export --int8")
    runners = {name: ort_runner(cpu_session(manifest.graphs[name].file("onnx", "fp32").path)) for name in GRAPHS}
    data = collect(generated_source(manifest.frame_size, frames), runners, manifest.frame_size)
    result = {}
    for name in GRAPHS:
        feeds = (data.calibration[name] + data.held_out[name])[:frames]
        result[name] = {
            precision: profile_op_types(manifest.graphs[name].file("onnx", precision).path, feeds, threads, repeats)
            for precision in ("fp32", "int8")
        }
    return result


def format_profile(profile: dict[str, dict[str, dict[str, float]]], top: int = 8) -> str:
    """A markdown table per graph: op type, ms per run and share, fp32 beside INT8."""
    lines = []
    for name, sides in profile.items():
        totals = {precision: sum(ops.values()) for precision, ops in sides.items()}
        lines.append(f"\n{name}: fp32 {totals['fp32']:.1f} ms, int8 {totals['int8']:.1f} ms per run "
                     f"({totals['fp32'] / totals['int8']:.2f}x)\n")
        lines.append("| fp32 op | ms | share | int8 op | ms | share |")
        lines.append("| --- | ---: | ---: | --- | ---: | ---: |")
        rows = [list(sides["fp32"].items())[:top], list(sides["int8"].items())[:top]]
        for index in range(max(len(rows[0]), len(rows[1]))):
            cells = []
            for precision, ops in zip(("fp32", "int8"), rows):
                if index < len(ops):
                    op, ms = ops[index]
                    cells += [op, f"{ms:.2f}", f"{100 * ms / totals[precision]:.0f}%"]
                else:
                    cells += ["", "", ""]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m eamstcn.bench.op_profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--engines", type=Path, required=True, help="A bundle exported with --int8.")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--frames", type=int, default=8, help="Inputs per graph (from a generated clip).")
    parser.add_argument("--json", type=Path, help="Also write the numbers as JSON.")
    args = parser.parse_args(argv)
    try:
        profile = profile_bundle(args.engines, args.threads, args.frames)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(format_profile(profile))
    if args.json:
        from eamstcn.fileio import atomic_write_bytes

        atomic_write_bytes(args.json, json.dumps(profile, indent=2).encode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

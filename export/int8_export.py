"""The INT8 step of an export: calibrate on real frames, quantize the three graphs, measure.

Runs after the fp32 graphs are written and checked (it needs them: calibration inputs come
from running them). Two levels of "keep in fp32 what measurably hurts":

1. inside a graph, node groups (:func:`eamstcn.export.quantize.quantize_graph`), judged
   by the graph's output error on held-out frames;
2. whole graphs, judged by the masks: the calibration clips run through the pipeline with
   the INT8 graphs and the label maps are compared with the fp32 pipeline's. While the
   mean IoU is below ``min_agreement``, the graph whose fp32 version restores the most
   agreement is kept in fp32 (its INT8 entry then names the fp32 file, with a note).

Writes ``<graph>.int8.onnx`` beside the fp32 files and returns what the manifest records:
the recipe, the calibration source, what was kept in fp32, and the measured parity.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eamstcn.export.calibration import CalibrationData, collect, mask_agreement, ort_runner
from eamstcn.export.calibration_source import CalibrationSource
from eamstcn.export.errors import ExportError
from eamstcn.export.int8_target import Int8Recipe
from eamstcn.export.parity import ErrorStats, ParityCase, measure
from eamstcn.export.quantize import CALIBRATION_METHOD, KEEP_GAIN, Int8Graph, QuantizeError, cpu_session, quantize_graph
from eamstcn.graph_spec import GRAPHS

Progress = Callable[[str], None]

#: Mean mask IoU (INT8 pipeline vs fp32 pipeline, calibration clips) an export must keep.
MIN_AGREEMENT = 0.98
#: A graph's INT8 file must run at least this much faster than its fp32 file (on this CPU,
#: when the recipe is for this CPU) or the graph stays fp32: rounding error that buys no
#: time. Not higher: a frame's time is the sum of its graphs', so every graph that gains
#: shortens the frame, and masks are guarded separately (MIN_AGREEMENT). The former 1.5x
#: kept the V2-B0 model's encoders (1.2-1.3x each) in fp32 where all-INT8 ran faster with
#: no J&F loss (docs/INT8.md).
MIN_SPEEDUP = 1.1


@dataclass
class Int8Result:
    """Per graph: the quantization report, its parity against PyTorch (K=1, K=3), the file
    its INT8 entry names (``<graph>.int8.onnx``, or the fp32 file when kept in fp32)."""

    graphs: dict[str, Int8Graph]
    parity: dict[str, dict[str, ErrorStats]]
    files: dict[str, str]
    fp32_graphs: list[str]
    manifest: dict[str, Any]


def int8_file(graph: str) -> str:
    return f"{graph}.int8.onnx"


def _pipeline_agreement(
    staging: Path, source: CalibrationSource, frame_size: tuple[int, int], reference: CalibrationData, int8_graphs: set[str],
) -> tuple[float, float]:
    """Mask agreement of the pipeline with ``int8_graphs`` in INT8 (the rest fp32) against
    the fp32 pipeline, over every frame of the calibration clips."""
    runners = {
        name: ort_runner(cpu_session(staging / (int8_file(name) if name in int8_graphs else f"{name}.onnx"))) for name in GRAPHS
    }
    return mask_agreement(collect(source, runners, frame_size).labels, reference.labels)


def measure_speedup(fp32: Path, int8: Path, feeds: list[dict[str, Any]], rounds: int = 3) -> float:
    """fp32 median latency / INT8 median latency on ``feeds`` (ONNX Runtime CPU, default
    threads). The two files run alternately, input by input, so a load change on the
    machine hits both alike."""
    from eamstcn.export.quantize import cpu_session

    sessions = [cpu_session(fp32), cpu_session(int8)]
    for session in sessions:
        session.run(None, feeds[0])  # first runs allocate
    times: list[list[float]] = [[], []]
    for _ in range(rounds):
        for item in feeds:
            for index, session in enumerate(sessions):
                start = time.perf_counter()
                session.run(None, item)
                times[index].append(time.perf_counter() - start)
    return statistics.median(times[0]) / statistics.median(times[1])


def _choose_fp32_graphs(
    staging: Path, source: CalibrationSource, frame_size: tuple[int, int], reference: CalibrationData,
    min_agreement: float, say: Progress, start_fp32: tuple[str, ...] = (),
) -> tuple[list[str], list[dict[str, Any]]]:
    """Graphs to keep in fp32 (``start_fp32``, then greedy, best restorer first) and every
    trial measured."""
    int8_graphs = set(GRAPHS) - set(start_fp32)
    mean, low = _pipeline_agreement(staging, source, frame_size, reference, int8_graphs)
    trials = [{"int8": sorted(int8_graphs), "mask_iou_mean": mean, "mask_iou_min": low}]
    say(f"INT8: masks of the INT8 pipeline vs fp32 over {len(reference.labels)} frames: mean IoU {mean:.4f}, min {low:.4f}")
    kept: list[str] = list(start_fp32)
    while mean < min_agreement and int8_graphs:
        options = {}
        for name in sorted(int8_graphs):
            options[name] = _pipeline_agreement(staging, source, frame_size, reference, int8_graphs - {name})
            trials.append({"int8": sorted(int8_graphs - {name}), "mask_iou_mean": options[name][0], "mask_iou_min": options[name][1]})
            say(f"INT8: with {name} in fp32: mean IoU {options[name][0]:.4f}, min {options[name][1]:.4f}")
        best = max(options, key=lambda name: options[name][0])
        if options[best][0] <= mean:
            break  # no graph in fp32 helps: keep INT8 where it is (the manifest shows the numbers)
        kept.append(best)
        int8_graphs.discard(best)
        mean, low = options[best]
        say(f"INT8: {best} kept in fp32 (mean IoU below {min_agreement})")
    return kept, trials


def export_int8(
    staging: Path, frame_size: tuple[int, int], source: CalibrationSource, recipe: Int8Recipe,
    cases: list[ParityCase], say: Progress, min_agreement: float = MIN_AGREEMENT,
    min_speedup: float | None = MIN_SPEEDUP,
) -> Int8Result:
    """Quantize ``staging/<graph>.onnx`` into ``staging/<graph>.int8.onnx`` for every graph.

    ``min_speedup`` None: speed is not measured (the recipe targets another CPU class, so
    this CPU's timings say nothing about it).

    Raises :class:`ExportError` (one line) when calibration or quantization fails.
    """
    say(f"INT8: running the fp32 graphs over the calibration frames ({source.description})")
    try:
        runners = {name: ort_runner(cpu_session(staging / f"{name}.onnx")) for name in GRAPHS}
        data = collect(source, runners, frame_size)
    except (QuantizeError, ValueError) as error:
        raise ExportError(f"INT8 calibration failed: {error}") from None
    del runners
    say(f"INT8: recipe for {recipe.target}: {recipe.why}")
    graphs: dict[str, Int8Graph] = {}
    try:
        for name in GRAPHS:
            graphs[name] = quantize_graph(
                name, staging / f"{name}.onnx", staging / int8_file(name), data.calibration[name], data.held_out[name], recipe, say
            )
        speedups: dict[str, float] = {}
        slow: list[str] = []
        if min_speedup is not None:
            for name in GRAPHS:
                feeds = (data.held_out[name] or data.calibration[name])[:8]
                speedups[name] = measure_speedup(staging / f"{name}.onnx", staging / int8_file(name), feeds)
                if speedups[name] < min_speedup:
                    slow.append(name)
                verdict = "kept in fp32" if name in slow else "INT8"
                say(f"{name}: INT8 runs {speedups[name]:.2f}x as fast as fp32 on this CPU ({verdict}; threshold {min_speedup}x)")
        fp32_graphs, agreement_trials = _choose_fp32_graphs(staging, source, frame_size, data, min_agreement, say, tuple(slow))
    except QuantizeError as error:
        raise ExportError(f"INT8: {error}") from None
    files: dict[str, str] = {}
    parity: dict[str, dict[str, ErrorStats]] = {}
    for name in GRAPHS:
        if name in fp32_graphs:
            (staging / int8_file(name)).unlink()
            files[name] = f"{name}.onnx"
        else:
            files[name] = int8_file(name)
        say(f"{name}: INT8 parity (ONNX Runtime vs PyTorch fp32)")
        parity[name] = measure(staging / files[name], name, cases)
    final = agreement_trials[0] if not fp32_graphs else next(
        trial for trial in reversed(agreement_trials) if set(trial["int8"]) == set(GRAPHS) - set(fp32_graphs)
    )
    manifest = {
        "format": "QDQ (ONNX Runtime static quantization)",
        "calibrate_method": CALIBRATION_METHOD,
        "recipe": recipe.to_dict(),
        "calibration": {**source.to_manifest(), "inputs": data.counts()},
        "keep_rules": [
            f"inside a graph, a node group is kept in fp32 when that lowers the held-out output error by at least {KEEP_GAIN:.0%}",
            (f"a whole graph is kept in fp32 when its INT8 file is less than {min_speedup}x as fast as fp32 on the exporting CPU"
             if min_speedup is not None else "speed not measured: the recipe targets another CPU class"),
            f"a whole graph is kept in fp32 while the INT8 pipeline's masks agree with fp32's below a mean IoU of {min_agreement}",
        ],
        "speedup_on_exporting_cpu": speedups,
        "fp32_reasons": {
            name: (f"INT8 only {speedups[name]:.2f}x as fast here" if name in slow else "INT8 moved the masks")
            for name in fp32_graphs
        },
        "kept_fp32": {name: (["graph"] if name in fp32_graphs else sorted(graphs[name].kept_fp32)) for name in GRAPHS},
        "fp32_graphs": fp32_graphs,
        "mask_agreement": {
            "frames": len(data.labels),
            "mean_iou": final["mask_iou_mean"],
            "min_iou": final["mask_iou_min"],
            "trials": agreement_trials,
        },
        "graphs": {name: graphs[name].to_manifest() for name in GRAPHS},
    }
    return Int8Result(graphs, parity, files, fp32_graphs, manifest)

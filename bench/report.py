"""The bench's outputs: a terminal table, CSV, JSON and a PNG plot. All files atomic."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from eamstcn.fileio import atomic_write_bytes
from eamstcn.bench.results import BackendResult, stage_names


def _number(value: float, digits: int = 1) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def format_table(header: dict[str, Any], results: list[BackendResult]) -> str:
    """Header lines (device, versions, size, K, memory) then one row per backend."""
    lines = [f"{key}: {value}" for key, value in header.items()]
    stages = stage_names(results)
    columns = ["backend", "FPS", "frame ms", "p90", *[f"{s} ms" for s in stages], "outside nets", "speed-up", "IoU mean", "IoU min", "stored", "host MB", "dev MB", "step"]
    rows = []
    for result in results:
        if result.status != "ok":
            rows.append([result.backend, f"skipped: {result.reason}"])
            continue
        rows.append(
            [
                result.backend,
                _number(result.fps, 2),
                _number(result.frame_median_ms),
                _number(result.frame_p90_ms),
                *[_number(result.stages[s].median_ms, 2) if s in result.stages else "-" for s in stages],
                _number(100 * result.outside_networks_fraction) + "%",
                _number(result.speedup, 2) + "x",
                _number(result.iou_mean, 4),
                _number(result.iou_min, 4),
                str(result.memory_frames),
                _number(result.peak_host_mb, 0),
                _number(result.peak_device_mb, 0),
                result.step_mode or "-",
            ]
        )
    widths = [max([len(columns[i]), *(len(row[i]) for row in rows if len(row) == len(columns))]) for i in range(len(columns))]  # a list: every row may be a skipped one
    lines.append("")
    lines.append("  ".join(name.rjust(width) for name, width in zip(columns, widths)))
    for row in rows:
        if len(row) == len(columns):
            lines.append("  ".join(cell.rjust(width) for cell, width in zip(row, widths)))
        else:
            lines.append(f"{row[0].rjust(widths[0])}  {row[1]}")
    lines.append("Stage times are medians over measured frames; value_encoder only on stored frames. IoU: agreement with the torch fp32 path.")
    lines.extend(reference_lines(results))
    return "\n".join(lines)


def reference_lines(results: list[BackendResult]) -> list[str]:
    """One line per row compared with another row of the run (INT8 against fp32)."""
    lines = []
    for result in results:
        if result.status != "ok" or not result.reference:
            continue
        stages = ", ".join(f"{stage} {speedup:.2f}x" for stage, speedup in result.stage_speedups.items()
                           if stage in ("key_encoder", "decoder", "value_encoder", "memory_read"))
        lines.append(
            f"{result.backend} vs {result.reference} (same run): {_number(result.reference_speedup, 2)}x FPS; "
            f"per stage (median): {stages}; mask IoU over all {result.frames} measured frames: "
            f"mean {_number(result.reference_iou_mean, 4)}, min {_number(result.reference_iou_min, 4)}"
        )
    return lines


def write_csv(path: str | Path, results: list[BackendResult]) -> None:
    stages = stage_names(results)
    rows = [result.flat(stages) for result in results]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(path, buffer.getvalue().encode())


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_jsonable(item) for item in value]
    return value


def write_json(path: str | Path, header: dict[str, Any], results: list[BackendResult], sweeps: dict[str, Any] | None = None) -> None:
    stages = stage_names(results)
    document = {"header": header, "stages": stages, "backends": [result.flat(stages) for result in results]}
    if sweeps:
        document["sweeps"] = sweeps
    atomic_write_bytes(path, json.dumps(_jsonable(document), indent=2).encode())


def write_plot(path: str | Path, header: dict[str, Any], results: list[BackendResult], sweeps: dict[str, Any] | None = None) -> None:
    """End-to-end FPS per backend, stacked per-stage time, and the sweeps if any."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    measured = [result for result in results if result.status == "ok"]
    stages = stage_names(measured)
    panels = 2 + (len(sweeps) if sweeps else 0)
    figure, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4.5))
    names = [result.backend for result in measured]

    axes[0].bar(names, [result.fps for result in measured], color="tab:blue")
    axes[0].set_title("end-to-end FPS")
    axes[0].tick_params(axis="x", rotation=30)

    bottom = [0.0] * len(measured)
    for stage in stages:
        heights = [result.stages[stage].per_frame_ms if stage in result.stages else 0.0 for result in measured]
        axes[1].bar(names, heights, bottom=bottom, label=stage)
        bottom = [b + h for b, h in zip(bottom, heights)]
    axes[1].set_title("mean ms per frame by stage (stacked)")
    axes[1].legend(fontsize=7)
    axes[1].tick_params(axis="x", rotation=30)

    for axis, (name, sweep) in zip(axes[2:], (sweeps or {}).items()):
        for backend, points in sweep["fps"].items():
            axis.plot(sweep["x"], points, marker="o", label=backend)
        axis.set_xlabel(sweep["label"])
        axis.set_ylabel("FPS")
        axis.set_title(f"FPS vs {sweep['label']}")
        axis.legend(fontsize=7)

    figure.suptitle(f"{header.get('device', '')}  {header.get('size', '')}  K={header.get('objects', '')}", fontsize=9)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    atomic_write_bytes(path, buffer.getvalue())

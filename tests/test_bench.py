"""eamstcn-bench on a tiny configuration: every column, every output file, honest skips."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from eamstcn.bench.cli import app
from eamstcn.bench.measure import mask_agreement
from eamstcn.bench.results import BackendResult, StageTiming, percentile
from eamstcn.checkpoint import save_checkpoint
from eamstcn.config import TINY
from eamstcn.fileio import file_sha256
from eamstcn.network import EamStcn

import numpy as np


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    folder = tmp_path_factory.mktemp("bench")
    torch.manual_seed(0)
    save_checkpoint(folder / "tiny.pth", EamStcn(TINY))
    args = [
        "--checkpoint", str(folder / "tiny.pth"), "--size", "64x64", "--frames-count", "8", "--warmup", "1",
        "--backends", "torch-fp32,onnxruntime-cpu,tensorrt-fp16", "--device", "cpu",
        "--csv", str(folder / "b.csv"), "--json", str(folder / "b.json"), "--plot", str(folder / "b.png"),
    ]
    result = CliRunner().invoke(app, args)
    return folder, result


def test_json_has_every_column_for_torch_and_onnxruntime(bench_run: tuple[Path, object]) -> None:
    folder, result = bench_run
    assert result.exit_code == 0, result.output
    document = json.loads((folder / "b.json").read_text())
    rows = {row["backend"]: row for row in document["backends"]}
    assert set(document["header"]) >= {"model", "device", "versions", "size", "objects", "memory"}
    assert document["header"]["model"].startswith("checkpoint tiny.pth (sha256 ")
    assert result.output.startswith("model: checkpoint tiny.pth") or "\nmodel: checkpoint tiny.pth" in result.output
    for name in ("torch-fp32", "onnxruntime-cpu"):
        row = rows[name]
        assert row["status"] == "ok"
        for column in ("fps", "frame_median_ms", "frame_p90_ms", "peak_host_mb", "memory_frames", "speedup", "iou_mean", "iou_min", "outside_networks_fraction"):
            assert row[column] is not None, (name, column)
        for stage in ("preprocess", "key_encoder", "memory_read", "decoder", "aggregate", "save_decision", "value_encoder"):
            assert row[f"{stage}_median_ms"] is not None and row[f"{stage}_median_ms"] > 0, (name, stage)
        assert row["frames"] == 7  # frame 0 initialises the memory and is not timed
        assert 1 <= row["memory_frames"] <= 16
    assert rows["torch-fp32"]["speedup"] == pytest.approx(1.0)
    # Same fp32 network through ONNX Runtime: the masks must agree.
    assert rows["onnxruntime-cpu"]["iou_min"] >= 0.99


def test_unavailable_backend_is_skipped_with_a_reason(bench_run: tuple[Path, object]) -> None:
    folder, result = bench_run
    rows = {row["backend"]: row for row in json.loads((folder / "b.json").read_text())["backends"]}
    assert rows["tensorrt-fp16"]["status"] == "skipped"
    assert rows["tensorrt-fp16"]["reason"]  # e.g. "needs CUDA"
    assert "tensorrt-fp16  skipped:" in result.output


def test_csv_and_plot_are_written(bench_run: tuple[Path, object]) -> None:
    folder, _ = bench_run
    with open(folder / "b.csv") as stream:
        rows = list(csv.DictReader(stream))
    assert [row["backend"] for row in rows] == ["torch-fp32", "onnxruntime-cpu", "tensorrt-fp16"]
    assert "decoder_p90_ms" in rows[0]
    digest = file_sha256(folder / "tiny.pth")[:12]
    assert {row["model"] for row in rows} == {f"checkpoint tiny.pth (sha256 {digest})"}
    assert (folder / "b.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_options_are_one_line_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["--backends", "warp-drive"])
    assert result.exit_code != 0 and "unknown backend" in result.output
    result = runner.invoke(app, ["--checkpoint", str(tmp_path / "missing.pth"), "--size", "64x64", "--device", "cpu"])
    assert result.exit_code == 2
    assert "checkpoint not found" in result.output
    assert "Traceback" not in result.output


def test_mask_agreement_and_statistics() -> None:
    a = np.zeros((4, 4), np.uint8)
    a[:2, :2] = 1
    b = a.copy()
    b[0, 0] = 0  # 3 of 4 pixels agree
    mean, minimum = mask_agreement([a, a], [a, b])
    assert minimum == pytest.approx(0.75) and mean == pytest.approx(0.875)
    assert mask_agreement([np.zeros((2, 2), np.uint8)], [np.zeros((2, 2), np.uint8)]) == (1.0, 1.0)
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 90) == pytest.approx(4.6)
    timing = StageTiming.from_samples([3.0, 1.0, 2.0])
    assert (timing.median_ms, timing.calls) == (2.0, 3)
    skipped = BackendResult.skipped("x", "why")
    assert math.isnan(skipped.fps) and skipped.flat(["decoder"])["decoder_median_ms"] != skipped.flat(["decoder"])["decoder_median_ms"]


def test_bench_names_the_bundled_and_the_random_model(tmp_path: Path) -> None:
    from eamstcn.bench.runner import describe_model
    from eamstcn.default_model import bundled_model

    assert describe_model(None, None, 7).startswith("random-weight default B1/B1 (seed 7")
    bundled = bundled_model()
    assert describe_model(bundled.path, None) == f"bundled model {bundled.name} (sha256 {bundled.sha256[:12]})"

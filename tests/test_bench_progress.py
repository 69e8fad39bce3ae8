"""eamstcn-bench says what it is doing per backend (building, exporting, warming up,
measuring, and a periodic frame line while it measures): no silent minutes."""

from __future__ import annotations

import pytest

from eamstcn.bench.config import BenchConfig
from tests.helpers.assets import RuntimeAssets


def test_bench_reports_each_stage_of_each_backend(runtime_assets: RuntimeAssets, monkeypatch: pytest.MonkeyPatch) -> None:
    import eamstcn.bench.runner as runner

    monkeypatch.setattr(runner, "PROGRESS_EVERY_S", 0.0)  # a line per frame instead of every 10 s
    messages: list[str] = []
    config = BenchConfig(
        checkpoint=runtime_assets.checkpoint, engines=runtime_assets.engines, frames_count=4, warmup=1,
        backends=("torch-fp32", "onnxruntime-cpu"), device="cpu",
    )
    report = runner.run_bench(config, notify=messages.append)
    assert [r.status for r in report.results] == ["ok", "ok"]
    for name in ("torch-fp32", "onnxruntime-cpu"):
        mine = [m for m in messages if m.startswith(f"{name}: ")]
        stages = [m.split(": ", 1)[1] for m in mine]
        assert stages[1] == "warming up (1 frames, not timed)" and stages[2] == "measuring 4 frames", mine
        assert [s for s in stages if s.startswith("frame ")] == ["frame 2/4", "frame 3/4", "frame 4/4"]
        assert "FPS" in stages[-1]


def test_bench_cli_lines_carry_the_elapsed_time(capsys: pytest.CaptureFixture[str]) -> None:
    from eamstcn.bench.cli import _timestamped

    notify = _timestamped(0.0)
    notify("torch-fp32: measuring 40 frames")
    line = capsys.readouterr().err.strip()
    assert line.startswith("[") and line.endswith("s] torch-fp32: measuring 40 frames")

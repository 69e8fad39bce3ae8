"""scripts/gpu_acceptance.sh --dry-run works on a machine without CUDA and without
albumentations: it collects the GPU tests, prints the plan and exits 0.

The install step is skipped here (ACCEPTANCE_SKIP_INSTALL=1: the package is installed
already, and a pip run would take most of the test's time); the device run does it.
albumentations is hidden by a stub package that fails to import, as it does there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash and coreutils timeout")
def test_dry_run_collects_the_gpu_tests_without_albumentations(tmp_path: Path) -> None:
    stub = tmp_path / "stub" / "albumentations"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text('raise ImportError("albumentations is not installed on the device machine")\n')
    env = {
        **os.environ,
        "ACCEPTANCE_SKIP_INSTALL": "1",
        "PYTHONPATH": os.pathsep.join([str(tmp_path / "stub"), os.environ.get("PYTHONPATH", "")]),
        "CUDA_VISIBLE_DEVICES": "",
    }
    out = tmp_path / "acceptance"
    result = subprocess.run(
        ["bash", "scripts/gpu_acceptance.sh", str(out), "--dry-run"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = (out / "summary.txt").read_text()
    assert "install: skipped" in summary and "collect: ok" in summary and "environment: ok" in summary
    collected = (out / "collect-gpu.log").read_text()
    assert "test_cuda_steady_frames_do_not_sync" in collected and "test_training" not in collected
    assert "available False" in (out / "environment.txt").read_text()
    assert "plan (each step its own subprocess" in result.stdout and "step-bench" in result.stdout

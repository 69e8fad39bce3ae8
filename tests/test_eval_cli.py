"""eamstcn-eval: the runtime session over DAVIS-layout folders, PNGs, CSVs, FPS."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from eamstcn.checkpoint import save_checkpoint
from eamstcn.config import TINY
from eamstcn.data.davis_io import read_mask, write_frame
from eamstcn.data.synth import generate_dataset
from eamstcn.runtime.eval_cli import app
from eamstcn.network import EamStcn


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    save_checkpoint(path, EamStcn(TINY).eval())
    return path


@pytest.fixture(scope="module")
def davis2017(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("d17")
    generate_dataset(root, sequences=2, frames=6, height=64, width=64, objects=2, seed=7)
    return root


def _davis2016(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for t in range(5):
        write_frame(root / "JPEGImages" / "480p" / "blob" / f"{t:05d}.jpg", rng.integers(0, 255, (48, 80, 3), dtype=np.uint8))
        mask = np.zeros((48, 80), dtype=np.uint8)
        mask[8:30, 10 + t : 40 + t] = 255
        path = root / "Annotations" / "480p" / "blob" / f"{t:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask, mode="L").save(path)
    return root


def _summary(out: Path) -> list[dict[str, str]]:
    with (out / "eval_summary.csv").open() as stream:
        return list(csv.DictReader(stream))


@pytest.mark.parametrize("save", ["fixed", "adaptive"])
def test_eval_davis2017_writes_palette_pngs_and_tables(checkpoint: Path, davis2017: Path, tmp_path: Path, save: str) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["--data", str(davis2017), "--checkpoint", str(checkpoint), "--out", str(out),
                                      "--save", save, "--save-every", "2", "--memory-frames", "3", "--top-k", "5",
                                      "--device", "cpu"])
    assert result.exit_code == 0, result.output
    for seq in ("synth-7-000", "synth-7-001"):
        files = sorted((out / seq).glob("*.png"))
        assert [f.name for f in files] == [f"{t:05d}.png" for t in range(6)]
        with Image.open(files[1]) as image:
            assert image.mode == "P" and image.size == (64, 64)
        # Frame 0 is the given annotation, written back unchanged.
        first = read_mask(davis2017 / "Annotations" / "480p" / seq / "00000.png")
        assert np.array_equal(read_mask(files[0]), first)
    assert (out / "global_results.csv").is_file() and (out / "per-sequence_results.csv").is_file()
    rows = _summary(out)
    assert [r["Sequence"] for r in rows] == ["synth-7-000", "synth-7-001", "ALL"]
    assert all(0 <= float(r["J&F"]) <= 100 and float(r["FPS"]) > 0 for r in rows)
    assert all(1 <= int(r["Stored"]) <= 5 for r in rows[:2])  # last frame never stored
    assert "ALL" in result.output and "FPS" in result.output


def test_eval_davis2016_binary_masks_and_subset(checkpoint: Path, tmp_path: Path) -> None:
    data = _davis2016(tmp_path / "d16")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["--data", str(data), "--checkpoint", str(checkpoint), "--out", str(out),
                                      "--save", "fixed", "--sequences", "blob", "--size", "32x48", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    # Predictions come back at the frame's own size even when the network ran smaller.
    with Image.open(out / "blob" / "00002.png") as image:
        assert image.size == (80, 48)
    assert set(np.unique(read_mask(out / "blob" / "00000.png"))) == {0, 1}
    assert _summary(out)[0]["Objects"] == "1"


def test_eval_errors_are_one_line(checkpoint: Path, davis2017: Path, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    runner = CliRunner()
    # No model at all: an install without the bundled weights (with them, eval uses them).
    monkeypatch.setenv("EAMSTCN_BUNDLED_MODEL", str(tmp_path / "no-bundled-model" / "MODEL.json"))
    result = runner.invoke(app, ["--data", str(davis2017)])
    assert result.exit_code == 2 and "--checkpoint" in result.output
    result = runner.invoke(app, ["--data", str(davis2017), "--checkpoint", str(checkpoint), "--sequences", "nope",
                                 "--out", str(tmp_path)])
    assert result.exit_code == 2 and "nope" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["--data", str(davis2017), "--checkpoint", str(tmp_path / "missing.pth")])
    assert result.exit_code == 2 and "not found" in result.output
    result = runner.invoke(app, ["--data", str(davis2017), "--checkpoint", str(checkpoint), "--size", "big"])
    assert result.exit_code != 0 and "HxW" in result.output


def test_eval_runs_an_exported_engine_bundle(runtime_assets, davis2017: Path, tmp_path: Path) -> None:
    """--engines: the same session on ONNX Runtime; frames are resized to the bundle's size."""
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["--data", str(davis2017), "--engines", str(runtime_assets.engines),
                                      "--out", str(out), "--sequences", "synth-7-000", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "onnxruntime" in result.output
    with Image.open(out / "synth-7-000" / "00003.png") as image:
        assert image.mode == "P" and image.size == (64, 64)
    assert [r["Sequence"] for r in _summary(out)] == ["synth-7-000", "ALL"]

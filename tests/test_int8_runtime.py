"""INT8 engines in the runtime, eval and bench; the factory's precision-aware auto choice
and its fallbacks (CUDA failures simulated on the CPU); the install extras."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from eamstcn.graph_spec import GRAPHS
from eamstcn.runtime.engines import factory
from eamstcn.runtime.engines.base import EngineError, EngineSet
from eamstcn.runtime.engines.factory import duplicate_installs, open_engines
from eamstcn.runtime.manifest import load_manifest
from tests.helpers.assets import FRAME_SIZE, RuntimeAssets, write_mask

pytest.importorskip("onnxruntime.quantization")
ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- runtime
def test_precision_int8_opens_the_int8_files(int8_bundle: Path) -> None:
    with open_engines(int8_bundle, precision="int8", device="cpu") as engines:
        assert (engines.backend, engines.precision, engines.dtype) == ("onnxruntime", "int8", torch.float32)
        assert "int8 engines run on ONNX Runtime's CPU provider" in engines.reason
        fp32 = json.loads((int8_bundle / "manifest.json").read_text())["int8"]["fp32_graphs"]
        int8 = [name for name in GRAPHS if name not in fp32]
        assert f"INT8 graphs: {', '.join(int8) or 'none'}" in engines.reason
    with open_engines(int8_bundle, device="cpu") as engines:  # auto stays fp32, and says int8 exists
        assert engines.precision == "fp32" and "--precision int8" in engines.reason


def test_int8_session_tracks_like_fp32(int8_bundle: Path) -> None:
    from eamstcn.data.synth import generate_sequence
    from eamstcn.runtime.session import Session

    clip = generate_sequence(9, frames=6, height=FRAME_SIZE[0], width=FRAME_SIZE[1], objects=1)
    labels = {}
    for precision in ("fp32", "int8"):
        with open_engines(int8_bundle, precision=precision, device="cpu") as engines:
            session = Session(engines)
            out = [session.labels(session.step(torch.from_numpy(f), torch.from_numpy(clip.masks[0]) if t == 0 else None))
                   for t, f in enumerate(clip.frames)]
            labels[precision] = torch.stack(out).numpy()
    assert labels["int8"].shape == labels["fp32"].shape
    assert np.array_equal(labels["int8"][0], labels["fp32"][0])  # the given mask
    assert set(np.unique(labels["int8"])) <= {0, 1}


def test_precision_int8_errors_are_one_line(runtime_assets: RuntimeAssets, int8_bundle: Path) -> None:
    cases = (
        (dict(engines_dir=runtime_assets.engines, precision="int8"), "no int8 files"),
        (dict(engines_dir=runtime_assets.engines, backend="onnxruntime", precision="int8"), "no int8 ONNX files"),
        (dict(checkpoint=runtime_assets.checkpoint, backend="torch", precision="int8"), "exported engines"),
        (dict(engines_dir=int8_bundle, backend="tensorrt", precision="int8"), ""),
        (dict(engines_dir=int8_bundle, precision="fp16", device="cpu"), "CUDA"),
        (dict(engines_dir=int8_bundle, precision="int4"), "unknown precision"),
    )
    for kwargs, message in cases:
        with pytest.raises(EngineError) as info:
            open_engines(**kwargs)
        assert message in str(info.value) and "\n" not in str(info.value)


def test_run_and_eval_cli_take_precision_int8(int8_bundle: Path, tmp_path: Path) -> None:
    from eamstcn.data.davis_io import write_frame
    from eamstcn.data.synth import generate_dataset, generate_sequence
    from eamstcn.runtime.eval_cli import app as eval_app
    from eamstcn.runtime.cli import app as run_app

    clip = generate_sequence(4, frames=5, height=64, width=56, objects=1)
    for t, frame in enumerate(clip.frames):
        write_frame(tmp_path / "frames" / f"{t:05d}.png", frame)
    mask = write_mask(tmp_path / "mask.png", clip.masks[0])
    result = CliRunner().invoke(run_app, ["--frames", str(tmp_path / "frames"), "--mask", str(mask), "--engines", str(int8_bundle),
                                          "--precision", "int8", "--output", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "int8" in result.output
    assert len(list((tmp_path / "out" / "masks").glob("*.png"))) == 5

    generate_dataset(tmp_path / "davis", sequences=1, frames=5, height=64, width=56, objects=1, seed=3)
    scores = {}
    for precision in ("fp32", "int8"):
        out = tmp_path / f"eval-{precision}"
        result = CliRunner().invoke(eval_app, ["--data", str(tmp_path / "davis"), "--engines", str(int8_bundle), "--precision", precision,
                                               "--out", str(out), "--device", "cpu"])
        assert result.exit_code == 0, result.output
        assert f"onnxruntime {precision}" in result.output
        scores[precision] = (out / "eval_summary.csv").read_text().splitlines()[-1]
    assert scores["int8"].startswith("ALL") and scores["fp32"].startswith("ALL")


# --------------------------------------------------------------------------- bench
def test_bench_int8_row_against_fp32(int8_bundle: Path, tmp_path: Path) -> None:
    from eamstcn.bench.cli import app

    args = ["--engines", str(int8_bundle), "--frames-count", "6", "--warmup", "1", "--device", "cpu",
            "--backends", "onnxruntime-cpu-int8,onnxruntime-cpu", "--json", str(tmp_path / "b.json"), "--csv", str(tmp_path / "b.csv")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = {row["backend"]: row for row in json.loads((tmp_path / "b.json").read_text())["backends"]}
    assert list(rows) == ["onnxruntime-cpu", "onnxruntime-cpu-int8"]  # table order, whatever --backends said
    row = rows["onnxruntime-cpu-int8"]
    assert row["status"] == "ok" and row["precision"] == "int8" and row["reference"] == "onnxruntime-cpu"
    assert 0.0 <= row["reference_iou_min"] <= row["reference_iou_mean"] <= 1.0
    assert row["reference_speedup"] > 0 and row["decoder_speedup_vs_reference"] > 0
    assert "onnxruntime-cpu-int8 vs onnxruntime-cpu (same run)" in result.output
    assert "decoder_speedup_vs_reference" in (tmp_path / "b.csv").read_text().splitlines()[0]


def test_bench_skips_int8_without_int8_engines(runtime_assets: RuntimeAssets, tmp_path: Path) -> None:
    from eamstcn.bench.config import BenchConfig
    from eamstcn.bench.runner import run_bench

    report = run_bench(BenchConfig(engines=runtime_assets.engines, frames_count=3, warmup=0, device="cpu",
                                   backends=("onnxruntime-cpu-int8",)), notify=lambda _m: None)
    assert report.results[0].status == "skipped" and "eamstcn-export --int8" in report.results[0].reason


# --------------------------------------------------------------------------- factory (issue 11 item 6)
def _fake_engines(manifest, device: torch.device, backend: str, precision: str, reason: str) -> EngineSet:
    return EngineSet(object(), object(), object(), manifest, device, torch.float32, backend, reason, precision)  # type: ignore[arg-type]


def test_auto_falls_back_with_the_reason_when_cuda_backends_fail(int8_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A plan from another GPU / TensorRT version and CUDA libraries that fail to load,
    simulated: auto moves on and says what it tried and why it failed."""
    from eamstcn.runtime.engines import onnxruntime_engine, tensorrt_engine

    manifest = load_manifest(int8_bundle)
    monkeypatch.setattr(tensorrt_engine, "tensorrt_available", lambda: True)
    monkeypatch.setattr(onnxruntime_engine, "cuda_provider_available", lambda: True)
    monkeypatch.setattr(type(manifest), "precisions", lambda self, fmt: {"fp16"} if fmt == "tensorrt" else {"fp32", "fp16", "int8"})
    failures = {
        "tensorrt": "TensorRT cannot load decoder.fp16.plan: plans are tied to the GPU and TensorRT version that built them",
        "onnxruntime-cuda": "onnxruntime fell back to the CPU for decoder.fp16.onnx: check the CUDA/cuDNN install",
    }
    opened = []

    def fake_open(backend, manifest, checkpoint, dev, precision, frame_size, reason):
        key = f"{backend}-cuda" if backend == "onnxruntime" and dev.type == "cuda" else backend
        opened.append((key, precision))
        if key in failures:
            raise EngineError(failures[key])
        return _fake_engines(manifest, dev, backend, precision, reason)

    monkeypatch.setattr(factory, "_open", fake_open)
    cuda = torch.device("cuda", 0)
    engines = factory._open_auto(manifest, None, cuda, "auto", None)
    assert (engines.backend, engines.device.type) == ("onnxruntime", "cpu")
    assert [key for key, _ in opened] == ["tensorrt", "onnxruntime-cuda", "onnxruntime"]
    assert "plans are tied to the GPU" in engines.reason and "check the CUDA/cuDNN install" in engines.reason

    opened.clear()
    engines = factory._open_auto(manifest, None, cuda, "int8", None)  # honours --precision: straight to the CPU
    assert opened == [("onnxruntime", "int8")] and engines.device.type == "cpu"

    failures["onnxruntime"] = "no CPU either"
    with pytest.raises(EngineError, match="no backend could open these engines: tensorrt on cuda"):
        factory._open_auto(manifest, None, cuda, "auto", None)


def test_auto_fp16_on_cuda_without_fp16_files_says_so(int8_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from eamstcn.runtime.engines import onnxruntime_engine, tensorrt_engine

    monkeypatch.setattr(tensorrt_engine, "tensorrt_available", lambda: True)
    monkeypatch.setattr(onnxruntime_engine, "cuda_provider_available", lambda: True)
    with pytest.raises(EngineError) as info:  # an fp32/int8 bundle: nothing can run fp16
        factory._candidates(load_manifest(int8_bundle), None, torch.device("cuda", 0), "fp16")
    assert "no fp16 plans" in str(info.value) and "no fp16 ONNX files" in str(info.value)
    candidates, skipped = factory._candidates(load_manifest(int8_bundle), None, torch.device("cuda", 0), "fp32")
    assert [(c[0], c[1].type) for c in candidates] == [("onnxruntime", "cuda"), ("onnxruntime", "cpu")]
    assert skipped == ["tensorrt: no fp32 plans in the bundle"]


def test_duplicate_runtime_installs_are_reported() -> None:
    both_ort = duplicate_installs(lambda name: name in ("onnxruntime", "onnxruntime-gpu", "opencv-python-headless"))
    assert len(both_ort) == 1 and "onnxruntime and onnxruntime-gpu" in both_ort[0]
    assert duplicate_installs(lambda name: name in ("onnxruntime", "opencv-python-headless")) == []


# --------------------------------------------------------------------------- install extras (issue 11 item 6)
def test_runtimes_and_opencv_flavours_are_exclusive_extras() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    base = " ".join(project["project"]["dependencies"])
    extras = project["project"]["optional-dependencies"]
    assert "onnxruntime" not in base and "opencv" not in base
    assert any(dep.startswith("onnxruntime>=") for dep in extras["cpu"]) and not any("gpu" in dep for dep in extras["cpu"])
    assert any(dep.startswith("onnxruntime-gpu") for dep in extras["gpu"]) and not any(dep.startswith("onnxruntime>") for dep in extras["gpu"])
    assert any(dep.startswith("opencv-python-headless") for dep in extras["headless"])
    assert any(dep.startswith("opencv-python>") for dep in extras["gui"])
    dev = extras["dev"][0]  # "eamstcn[...]": a working CPU install for CI
    chosen = set(dev[dev.index("[") + 1 : dev.index("]")].split(","))
    assert {"cpu", "headless"} <= chosen and not {"gpu", "gui"} & chosen
    conflicts = project["tool"]["uv"]["conflicts"]
    assert [{"extra": "cpu"}, {"extra": "gpu"}] in conflicts and [{"extra": "headless"}, {"extra": "gui"}] in conflicts
    assert 'pip install -e ".[dev]"' in (ROOT / ".ci" / "run").read_text()


def test_int8_graphs_line_names_what_stays_fp32() -> None:
    from eamstcn.runtime.engines.factory import int8_graphs_line

    raw = {"int8": {"fp32_graphs": ["key_encoder"], "fp32_reasons": {"key_encoder": "INT8 only 1.05x as fast here"}}}
    assert int8_graphs_line(raw) == ("INT8 graphs: value_encoder, decoder; "
                                     "kept in fp32: key_encoder (INT8 only 1.05x as fast here)")
    assert int8_graphs_line({"int8": {"fp32_graphs": []}}) == "INT8 graphs: key_encoder, value_encoder, decoder"

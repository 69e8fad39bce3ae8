"""The bundled default model: an fp16 weights-only checkpoint with MODEL.json, verified by
sha256, loaded back to fp32, and used by eamstcn-run / -export / -eval when given no
model; ``eamstcn-run --demo``. The real weights land later: every test here builds a
tiny one in tmp_path and points ``EAMSTCN_BUNDLED_MODEL`` at it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from eamstcn.default_model import (
    ENV_VAR,
    BundledModelError,
    BundledModelMissing,
    bundled_checkpoint,
    bundled_model,
    pack_bundled_model,
)
from tests.helpers.assets import RuntimeAssets, write_mask


@pytest.fixture(scope="module")
def packed(runtime_assets: RuntimeAssets, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("bundled")
    pack_bundled_model(runtime_assets.checkpoint, folder, "eamstcn-test-tiny", "eamstcn-train phase2 --preset tiny", {"J&F": 12.3})
    return folder


@pytest.fixture()
def bundled(packed: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(ENV_VAR, str(packed))
    return packed


def test_pack_writes_fp16_weights_and_a_description(bundled: Path, runtime_assets: RuntimeAssets) -> None:
    description = json.loads((bundled / "MODEL.json").read_text())
    assert description["name"] == "eamstcn-test-tiny" and description["file"] == "eamstcn-test-tiny.pth"
    assert description["training_command"].startswith("eamstcn-train") and description["numbers"] == {"J&F": 12.3}
    payload = torch.load(bundled / "eamstcn-test-tiny.pth", weights_only=True)
    floats = [t for t in payload["weights"].values() if t.is_floating_point()]
    assert floats and all(t.dtype == torch.float16 for t in floats)
    assert payload["training"] is None
    assert (bundled / "eamstcn-test-tiny.pth").stat().st_size < runtime_assets.checkpoint.stat().st_size * 0.6


def test_loads_back_to_fp32(bundled: Path, runtime_assets: RuntimeAssets) -> None:
    from tests.helpers.models import load_model

    model = load_model(bundled_checkpoint())
    reference = load_model(runtime_assets.checkpoint)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    image = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        ours, theirs = model.encode_key(image)[0], reference.encode_key(image)[0]
    assert torch.allclose(ours, theirs, atol=1e-2 * float(theirs.abs().max()))


def test_describe_names_the_model_and_its_hash(bundled: Path) -> None:
    model = bundled_model()
    assert model.describe() == f"using the bundled model eamstcn-test-tiny (sha256 {model.sha256[:12]}...)"


def test_a_damaged_weights_file_is_refused(packed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(packed, copy)
    weights = copy / "eamstcn-test-tiny.pth"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF  # same size, other bytes
    weights.write_bytes(bytes(data))
    monkeypatch.setenv(ENV_VAR, str(copy / "MODEL.json"))
    with pytest.raises(BundledModelError, match="does not match its sha256"):
        bundled_checkpoint()


def test_missing_model_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "nothing"))
    with pytest.raises(BundledModelMissing, match="the bundled model is missing in this install"):
        bundled_model()
    (tmp_path / "MODEL.json").write_text(json.dumps({"format": "eamstcn-bundled-model", "version": 1, "name": "x", "file": "x.pth", "sha256": "0"}))
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    with pytest.raises(BundledModelMissing, match="x.pth is not there"):
        bundled_model()


def test_the_package_declares_the_weights_folder() -> None:
    import tomllib

    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    data = pyproject["tool"]["setuptools"]["package-data"]["eamstcn"]
    assert "weights/MODEL.json" in data and "weights/*.pth" in data


# --------------------------------------------------------------------------- commands


@pytest.fixture(scope="module")
def clip_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from eamstcn.data.davis_io import write_frame
    from eamstcn.data.synth import generate_sequence

    clip = generate_sequence(seed=3, frames=3, height=64, width=64, objects=1)
    root = tmp_path_factory.mktemp("clip")
    for t, frame in enumerate(clip.frames):
        write_frame(root / "frames" / f"{t:05d}.png", frame)
    return {"frames": root / "frames", "mask": write_mask(root / "mask.png", clip.masks[0])}


def test_run_uses_the_bundled_model_when_given_none(bundled: Path, clip_files, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from eamstcn.runtime.cli import app

    monkeypatch.chdir(tmp_path)  # no ./engines here
    result = CliRunner().invoke(app, ["--frames", str(clip_files["frames"]), "--mask", str(clip_files["mask"]), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if "bundled model" in line]
    assert lines == [f"notice: {bundled_model().describe()}"]
    assert "frames: 3" in result.stdout and "torch" in result.stdout


def test_export_uses_the_bundled_model_when_given_none(bundled: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import eamstcn.export.bundle as export_bundle_module
    import eamstcn.export.cli as export_cli

    seen = {}

    def fake_export(config, progress=None):
        seen["checkpoint"] = config.checkpoint
        raise export_bundle_module.ExportError("stopped here by the test")

    monkeypatch.setattr(export_bundle_module, "export_bundle", fake_export)  # imported when the command runs
    result = CliRunner().invoke(export_cli.app, ["--out", str(tmp_path / "engines")])
    assert seen["checkpoint"] == bundled_checkpoint()
    assert bundled_model().describe() in result.stderr


def test_export_without_checkpoint_or_bundled_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import eamstcn.export.cli as export_cli

    monkeypatch.setenv(ENV_VAR, str(tmp_path / "none"))
    result = CliRunner().invoke(export_cli.app, ["--out", str(tmp_path / "engines")])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "error: no --checkpoint given and the bundled model is missing in this install: pass --checkpoint best.pth"
    ]


def test_eval_uses_the_bundled_model_when_given_none(bundled: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import eamstcn.runtime.evaluate as run_eval
    from eamstcn.runtime.eval_cli import app

    seen = {}

    def fake_evaluate(options, notify=print):
        seen["checkpoint"] = options.checkpoint
        raise ValueError("stopped here by the test")

    monkeypatch.setattr(run_eval, "evaluate", fake_evaluate)
    result = CliRunner().invoke(app, ["--data", str(tmp_path), "--out", str(tmp_path / "o")])
    assert seen["checkpoint"] == bundled_checkpoint()
    assert bundled_model().describe() in result.output


def test_demo_writes_masks_overlay_and_stats(bundled: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import eamstcn.runtime.demo as demo
    from eamstcn.runtime.cli import app

    monkeypatch.setattr(demo, "DEMO_FRAMES", 5)  # the real demo: 36 frames at 128x224
    monkeypatch.setattr(demo, "DEMO_SIZE", (64, 96))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["--demo"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "eamstcn-demo"
    assert len(list((out / "masks").glob("*.png"))) == 5 and (out / "overlay.mp4").is_file()
    assert len((out / "stats.csv").read_text().splitlines()) == 1 + 5
    assert len(list((out / "input").glob("*.png"))) == 5 and (out / "first_mask.png").is_file()
    assert "using the bundled model eamstcn-test-tiny" in result.stderr
    first, second = [line for line in result.stdout.strip().splitlines() if not line.startswith("backend: ")][-2:]
    assert first.startswith("demo: 5 generated frames, 1 object, ") and "mean IoU with the generator's true masks" in first
    assert second.startswith("wrote eamstcn-demo/")


def test_demo_is_deterministic() -> None:
    from eamstcn.data.synth import generate_sequence
    from eamstcn.runtime.demo import DEMO_FRAMES, DEMO_OBJECTS, DEMO_SEED, DEMO_SIZE

    a = generate_sequence(DEMO_SEED, 4, *DEMO_SIZE, objects=DEMO_OBJECTS)
    b = generate_sequence(DEMO_SEED, 4, *DEMO_SIZE, objects=DEMO_OBJECTS)
    assert np.array_equal(a.frames, b.frames) and DEMO_FRAMES >= 30 and DEMO_SIZE[0] % 16 == 0


def test_demo_without_the_bundled_model_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from eamstcn.runtime.cli import app

    monkeypatch.setenv(ENV_VAR, str(tmp_path / "none"))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["--demo"])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "error: --demo runs the bundled model, which is missing in this install; "
        "pass --checkpoint best.pth (or --engines DIR) to run the demo with yours"
    ]
    assert not (tmp_path / "eamstcn-demo").exists()


# --------------------------------------------------------------------------- its frame size


@pytest.fixture()
def bundled_sized(runtime_assets: RuntimeAssets, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The tiny model packed with a frame size, as the shipped model is (it was trained
    on small frames: full-size ones would be far from what it has seen)."""
    pack_bundled_model(runtime_assets.checkpoint, tmp_path / "sized", "eamstcn-test-sized", frame_size=(48, 80))
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "sized"))
    return tmp_path / "sized"


def test_bundled_frame_size_is_recorded_and_announced(bundled_sized: Path) -> None:
    model = bundled_model()
    assert model.frame_size == (48, 80) and "frames resized to 48x80" in model.describe()
    description = json.loads((bundled_sized / "MODEL.json").read_text())
    description["frame_size"] = "big"
    (bundled_sized / "MODEL.json").write_text(json.dumps(description))
    with pytest.raises(BundledModelError, match="frame_size must be"):
        bundled_model()


def test_run_export_eval_use_the_bundled_frame_size(bundled_sized: Path, clip_files, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import eamstcn.runtime.evaluate as run_eval
    import eamstcn.export.bundle as export_bundle_module
    import eamstcn.export.cli as export_cli
    import eamstcn.runtime.runner as runner
    from eamstcn.runtime.eval_cli import app as eval_app
    from eamstcn.runtime.cli import app as run_app

    seen: dict[str, object] = {}
    opened = runner.open_engines

    def spy_open(*args, **kwargs):
        seen["run"] = kwargs.get("frame_size")
        return opened(*args, **kwargs)

    monkeypatch.setattr(runner, "open_engines", spy_open)
    monkeypatch.chdir(tmp_path)  # no ./engines here
    result = CliRunner().invoke(run_app, ["--frames", str(clip_files["frames"]), "--mask", str(clip_files["mask"]),
                                          "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert seen["run"] == (48, 80)
    CliRunner().invoke(run_app, ["--frames", str(clip_files["frames"]), "--mask", str(clip_files["mask"]),
                                 "--device", "cpu", "--size", "32x32"])
    assert seen["run"] == (32, 32)  # --size wins

    def fake_export(config, progress=None):
        seen["export"] = config.frame_size
        raise export_bundle_module.ExportError("stopped here by the test")

    monkeypatch.setattr(export_bundle_module, "export_bundle", fake_export)  # imported when the command runs
    CliRunner().invoke(export_cli.app, ["--out", str(tmp_path / "engines")])
    assert seen["export"] == (48, 80)

    def fake_evaluate(options, notify=print):
        seen["eval"] = options.size
        raise ValueError("stopped here by the test")

    monkeypatch.setattr(run_eval, "evaluate", fake_evaluate)
    CliRunner().invoke(eval_app, ["--data", str(tmp_path), "--out", str(tmp_path / "o")])
    assert seen["eval"] == (48, 80)


# --------------------------------------------------------------------------- bundled engines


@pytest.fixture(scope="module")
def packed_with_engines(runtime_assets: RuntimeAssets, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A packed tiny model plus its own export (64x64, fp32 ONNX) attached beside it."""
    from eamstcn.default_model import attach_engines
    from eamstcn.export.bundle import ExportConfig, export_bundle

    folder = tmp_path_factory.mktemp("bundled-engines")
    model = pack_bundled_model(runtime_assets.checkpoint, folder, "eamstcn-test-tiny", "eamstcn-train ...", {})
    staging = tmp_path_factory.mktemp("export") / "engines"
    export_bundle(ExportConfig(checkpoint=model.path, out=staging, frame_size=(64, 64), max_objects=4, simplify=False, trt=False))
    attach_engines(folder, staging)
    return folder


def test_attach_engines_names_them_in_the_description(packed_with_engines: Path, runtime_assets: RuntimeAssets) -> None:
    from eamstcn.default_model import attach_engines

    model = bundled_model(description=packed_with_engines / "MODEL.json")
    assert model.engines == packed_with_engines / "eamstcn-test-tiny-engines"
    assert (model.engines / "manifest.json").is_file() and model.frame_size == (64, 64)
    assert oct((model.engines / "decoder.onnx").stat().st_mode & 0o777) == "0o644"
    with pytest.raises(BundledModelError, match="was exported from sha256"):
        attach_engines(packed_with_engines, runtime_assets.engines)  # another checkpoint's export


def test_damaged_bundled_engines_are_one_line(packed_with_engines: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(packed_with_engines, copy)
    (copy / "eamstcn-test-tiny-engines" / "manifest.json").unlink()
    with pytest.raises(BundledModelError, match="bundled engines .* are missing or damaged"):
        bundled_model(description=copy / "MODEL.json")


def test_run_uses_the_bundled_engines_on_onnxruntime(packed_with_engines: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from eamstcn.runtime.runner import resolve_model

    monkeypatch.setenv(ENV_VAR, str(packed_with_engines))
    monkeypatch.chdir(tmp_path)  # no ./engines here
    said: list[str] = []
    engines, checkpoint, size = resolve_model(None, None, said.append)
    assert engines == packed_with_engines / "eamstcn-test-tiny-engines" and checkpoint is not None and size == (64, 64)
    assert said and said[0].startswith("using the bundled model eamstcn-test-tiny")


def test_runtime_only_install_runs_the_bundled_model(packed_with_engines: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """No timm, no onnx, no click: --demo and a video run on the bundled ONNX engines."""
    from eamstcn.data.synth import generate_sequence, write_video
    from tests.helpers.runtime_only import run_runtime_only

    monkeypatch.setenv(ENV_VAR, str(packed_with_engines))
    result = run_runtime_only("eamstcn-run", "--demo", "--output", tmp_path / "demo", "--device", "cpu", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "backend: onnxruntime" in result.stdout and "mean IoU" in result.stdout
    clip = generate_sequence(seed=5, frames=4, height=64, width=96, objects=1)
    video = write_video(tmp_path / "clip.mp4", clip.frames, fps=8)
    mask = write_mask(tmp_path / "first.png", clip.masks[0])
    result = run_runtime_only("eamstcn-run", "--video", video, "--mask", mask, "--output", tmp_path / "out",
                              "--device", "cpu", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "out" / "masks").glob("*.png"))) == 4


def test_eval_uses_the_bundled_engines_unless_a_size_is_asked(packed_with_engines: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import eamstcn.runtime.evaluate as run_eval
    from eamstcn.runtime.eval_cli import app as eval_app

    seen: list[tuple[object, object]] = []

    def fake_evaluate(options, notify=print):
        seen.append((options.engines, options.size))
        raise ValueError("stopped here by the test")

    monkeypatch.setenv(ENV_VAR, str(packed_with_engines))
    monkeypatch.setattr(run_eval, "evaluate", fake_evaluate)
    CliRunner().invoke(eval_app, ["--data", str(tmp_path), "--out", str(tmp_path / "o")])
    CliRunner().invoke(eval_app, ["--data", str(tmp_path), "--out", str(tmp_path / "o"), "--size", "32x32"])
    assert seen == [(packed_with_engines / "eamstcn-test-tiny-engines", (64, 64)), (None, (32, 32))]


def test_the_shipped_model_tracks_the_demo_clip_on_its_engines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real bundled model (no override): its engines were exported from its checkpoint,
    every graph has an INT8 file, and the demo clip is tracked (0.97 when it shipped)."""
    from eamstcn.runtime.demo import run_demo

    monkeypatch.delenv(ENV_VAR, raising=False)
    model = bundled_model()
    manifest = json.loads((model.engines / "manifest.json").read_text())
    assert manifest["checkpoint"]["sha256"] == model.sha256 and manifest["int8"]["fp32_graphs"] == []
    result = run_demo(tmp_path / "demo", device="cpu", notify=lambda line: None, progress=False)
    assert result.summary.backend.startswith("onnxruntime fp32") and result.mean_iou > 0.9

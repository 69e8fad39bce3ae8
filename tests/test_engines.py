"""Engines: manifest checks, backend choice, torch vs ONNX Runtime on the same clip."""

from __future__ import annotations

import builtins
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from eamstcn import graph_spec
from eamstcn.runtime.config import MemoryConfig, SaveConfig
from eamstcn.runtime.engines.base import EngineError, Engine
from eamstcn.runtime.engines.factory import open_engines, resolve_device
from eamstcn.runtime.manifest import ManifestError, load_manifest
from eamstcn.runtime.session import Session
from tests.helpers.assets import FRAME_SIZE, RuntimeAssets, copy_bundle, iou


def _block_import(monkeypatch: pytest.MonkeyPatch, blocked: str) -> None:
    real_import = builtins.__import__

    def fake_import(name: str, *args: object, **kwargs: object) -> object:
        if name.split(".")[0] == blocked:
            raise ImportError(f"No module named {blocked!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)


# --------------------------------------------------------------------------- manifest


def test_manifest_loads_and_matches_graph_spec(runtime_assets: RuntimeAssets) -> None:
    manifest = load_manifest(runtime_assets.engines, verify="sha256")
    assert manifest.frame_size == FRAME_SIZE
    assert manifest.padded_size == (64, 64) and manifest.pads == (4, 4, 0, 0)
    assert manifest.max_objects == 4
    for name in graph_spec.GRAPHS:
        inputs, outputs = graph_spec.GRAPH_IO[name]
        assert tuple(s.name for s in manifest.graphs[name].inputs) == inputs
        assert tuple(s.name for s in manifest.graphs[name].outputs) == outputs
    assert "fp32" in manifest.precisions("onnx")


def _edit_manifest(folder: Path, edit) -> None:
    path = folder / "manifest.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        ("no_folder", "eamstcn-export --checkpoint best.pth"),
        ("no_manifest", "eamstcn-export --checkpoint best.pth"),
        ("bad_json", "not valid JSON"),
        ("wrong_format", "not an EamStcn engine manifest"),
        ("wrong_version", "manifest version 99"),
        ("missing_file", "missing"),
        ("size_mismatch", "bytes but manifest.json says"),
        ("wrong_io_names", "expects ['readout', 'f16x', 'f8', 'f4']"),
        ("wrong_graphs", "expected ['key_encoder', 'value_encoder', 'decoder']"),
    ],
)
def test_manifest_errors_are_one_line(runtime_assets: RuntimeAssets, tmp_path: Path, damage: str, expected: str) -> None:
    folder = copy_bundle(runtime_assets.engines, tmp_path / "engines")
    if damage == "no_folder":
        folder = tmp_path / "nowhere"
    elif damage == "no_manifest":
        (folder / "manifest.json").unlink()
    elif damage == "bad_json":
        (folder / "manifest.json").write_text("{not json")
    elif damage == "wrong_format":
        _edit_manifest(folder, lambda d: d.update(format="something-else"))
    elif damage == "wrong_version":
        _edit_manifest(folder, lambda d: d.update(version=99))
    elif damage == "missing_file":
        (folder / "decoder.onnx").unlink()
    elif damage == "size_mismatch":
        with open(folder / "decoder.onnx", "ab") as stream:
            stream.write(b"\0")
    elif damage == "wrong_io_names":
        _edit_manifest(folder, lambda d: d["graphs"]["decoder"]["inputs"][0].update(name="memory"))
    elif damage == "wrong_graphs":
        _edit_manifest(folder, lambda d: d["graphs"].pop("decoder"))
    with pytest.raises(ManifestError) as info:
        load_manifest(folder)
    message = str(info.value)
    assert expected in message and "\n" not in message


def test_sha256_is_checked_only_on_request(runtime_assets: RuntimeAssets, tmp_path: Path) -> None:
    folder = copy_bundle(runtime_assets.engines, tmp_path / "engines")
    path = folder / "decoder.onnx"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # same size, different content
    path.write_bytes(bytes(data))
    load_manifest(folder)  # size-only by default
    with pytest.raises(ManifestError, match="sha256"):
        load_manifest(folder, verify="sha256")


# --------------------------------------------------------------------------- factory


def test_auto_on_cpu_picks_onnxruntime_and_says_why(runtime_assets: RuntimeAssets) -> None:
    with open_engines(runtime_assets.engines) as engines:
        assert engines.backend == "onnxruntime" and engines.device == torch.device("cpu")
        assert engines.dtype == torch.float32 and "CPU" in engines.reason
        for engine in (engines.key_encoder, engines.value_encoder, engines.decoder):
            assert isinstance(engine, Engine)


def test_auto_with_only_a_checkpoint_picks_torch(runtime_assets: RuntimeAssets) -> None:
    with open_engines(checkpoint=runtime_assets.checkpoint) as engines:
        assert engines.backend == "torch" and engines.manifest.frame_size is None


def test_backend_not_installed_is_one_clear_error(runtime_assets: RuntimeAssets, monkeypatch: pytest.MonkeyPatch) -> None:
    _block_import(monkeypatch, "onnxruntime")
    with pytest.raises(EngineError, match="onnxruntime is not installed"):
        open_engines(runtime_assets.engines, backend="onnxruntime")
    with pytest.raises(EngineError, match="onnxruntime is not installed"):
        open_engines(runtime_assets.engines)  # auto, CPU, no checkpoint to fall back on
    with open_engines(runtime_assets.engines, runtime_assets.checkpoint) as engines:
        assert engines.backend == "torch" and "onnxruntime not installed" in engines.reason


def test_tensorrt_needs_tensorrt_and_plans(runtime_assets: RuntimeAssets) -> None:
    with pytest.raises(EngineError) as info:
        open_engines(runtime_assets.engines, backend="tensorrt", device="cpu")
    assert "\n" not in str(info.value)


def test_bad_names_are_rejected(runtime_assets: RuntimeAssets) -> None:
    with pytest.raises(EngineError, match="unknown backend"):
        open_engines(runtime_assets.engines, backend="openvino")
    with pytest.raises(EngineError, match="needs a checkpoint"):
        open_engines(runtime_assets.engines, backend="torch")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only machine")
def test_device_defaults_to_cpu_without_cuda() -> None:
    assert resolve_device(None) == torch.device("cpu")
    with pytest.raises(EngineError, match="CUDA is not available"):
        resolve_device("cuda")


# --------------------------------------------------------------------------- parity


def _graph_inputs(engines, num_objects: int) -> dict[str, dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    height, width = engines.manifest.padded_size
    image = torch.randn(1, 3, height, width, generator=generator)
    features = engines.key_encoder(image=image)
    masks = torch.rand(num_objects, 1, height, width, generator=generator)
    readout = torch.randn(num_objects, *features["f16x"].shape[1:], generator=generator)
    return {
        "key_encoder": {"image": image},
        "value_encoder": {"image": image, "masks": masks, "others": masks.sum(0, keepdim=True) - masks, "f16x": features["f16x"]},
        "decoder": {"readout": readout, "f16x": features["f16x"], "f8": features["f8"], "f4": features["f4"]},
    }


@pytest.mark.parametrize("num_objects", [1, 3])
def test_each_graph_matches_torch(runtime_assets: RuntimeAssets, num_objects: int) -> None:
    with (
        open_engines(runtime_assets.engines, runtime_assets.checkpoint, backend="torch") as reference,
        open_engines(runtime_assets.engines, backend="onnxruntime") as exported,
    ):
        inputs = _graph_inputs(reference, num_objects)
        for name in graph_spec.GRAPHS:
            expected = getattr(reference, name)(**inputs[name])
            actual = getattr(exported, name)(**{k: v.clone() for k, v in inputs[name].items()})
            assert set(actual) == set(graph_spec.GRAPH_IO[name][1])
            for output, tensor in expected.items():
                assert actual[output].shape == tensor.shape
                torch.testing.assert_close(actual[output], tensor, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_bound_engines_run_into_fixed_outputs(runtime_assets: RuntimeAssets, backend: str) -> None:
    """ORT binds natively (I/O binding, on the CPU too); torch gets a CopyBinding."""
    from eamstcn.runtime.engines.binding import CopyBinding, bind
    from eamstcn.runtime.engines.onnxruntime_engine import OrtBinding

    with open_engines(runtime_assets.engines, runtime_assets.checkpoint, backend=backend) as engines:
        inputs = _graph_inputs(engines, 2)
        for name in graph_spec.GRAPHS:
            engine = getattr(engines, name)
            fixed = {key: value.clone().contiguous() for key, value in inputs[name].items()}
            bound = bind(engine, fixed, 1 if name == graph_spec.KEY_ENCODER else 2)
            assert isinstance(bound, OrtBinding if backend == "onnxruntime" else CopyBinding)
            assert bound.capturable == (backend == "torch")
            pointers = {key: tensor.data_ptr() for key, tensor in bound.outputs.items()}
            for scale in (1.0, 0.5):  # inputs changed in place: the next run sees them
                for tensor in fixed.values():
                    tensor.mul_(scale)
                bound.run()
                expected = engine(**{key: value.clone() for key, value in fixed.items()})
                for key, tensor in bound.outputs.items():
                    torch.testing.assert_close(tensor, expected[key], rtol=1e-5, atol=1e-5)
            assert {key: tensor.data_ptr() for key, tensor in bound.outputs.items()} == pointers


def test_onnxruntime_binding_checks_its_inputs(runtime_assets: RuntimeAssets) -> None:
    from eamstcn.runtime.engines.binding import bind

    with open_engines(runtime_assets.engines, backend="onnxruntime") as engines:
        height, width = engines.manifest.padded_size
        with pytest.raises(EngineError, match="bound input image"):
            bind(engines.key_encoder, {"image": torch.zeros(1, 3, height, width + 16)}, 1)
        with pytest.raises(EngineError, match="takes inputs"):
            bind(engines.key_encoder, {"picture": torch.zeros(1, 3, height, width)}, 1)
        bound = bind(engines.key_encoder, {"image": torch.zeros(1, 3, height, width)}, 1)
        engines.key_encoder.close()
        with pytest.raises(EngineError, match="closed"):
            bound.run()


def test_torch_and_onnxruntime_give_the_same_masks_over_a_clip(runtime_assets: RuntimeAssets) -> None:
    from eamstcn.data.synth import generate_sequence

    clip = generate_sequence(seed=3, frames=50, height=64, width=64, objects=2)
    labels = {}
    for backend in ("torch", "onnxruntime"):
        with open_engines(runtime_assets.engines, runtime_assets.checkpoint, backend=backend) as engines:
            session = Session(engines, MemoryConfig(capacity=6), SaveConfig(mode="fixed", save_every=5))
            out = []
            for t, frame in enumerate(clip.frames):
                mask = torch.from_numpy(clip.masks[0]) if t == 0 else None
                probs = session.step(torch.from_numpy(frame), mask, is_last=t == len(clip.frames) - 1)
                out.append(session.labels(probs).numpy())
            labels[backend] = np.stack(out)
            assert session.stored_frames == 1 + 9  # t=0 and every 5th frame up to 45
    for t in range(len(clip.frames)):
        for object_id in (1, 2):
            score = iou(labels["torch"][t] == object_id, labels["onnxruntime"][t] == object_id)
            assert score >= 0.99, (t, object_id, score)


# --------------------------------------------------------------------------- GPU (skipped on CPU-only machines)


def _clip_labels(engines, clip) -> np.ndarray:
    session = Session(engines, MemoryConfig(capacity=4), SaveConfig(mode="fixed", save_every=3), timing=True)
    out = []
    for t, frame in enumerate(clip.frames):
        mask = torch.from_numpy(clip.masks[0]) if t == 0 else None
        probs = session.step(torch.from_numpy(frame).to(engines.device), mask)
        assert probs.device == engines.device and bool(torch.isfinite(probs).all())
        out.append(session.labels(probs).cpu().numpy())
    assert session.last_stats is not None and session.last_stats.total_ms > 0
    return np.stack(out)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_backends_match_the_cpu(runtime_assets: RuntimeAssets) -> None:
    from eamstcn.data.synth import generate_sequence
    from eamstcn.runtime.engines.onnxruntime_engine import cuda_provider_available

    clip = generate_sequence(seed=3, frames=10, height=64, width=64, objects=2)
    with open_engines(runtime_assets.engines, runtime_assets.checkpoint, backend="torch", device="cpu") as engines:
        expected = _clip_labels(engines, clip)
    cases = [("torch", "fp32", 0.99), ("torch", "fp16", 0.9)]
    if cuda_provider_available():
        cases.append(("onnxruntime", "fp32", 0.99))
    for backend, precision, threshold in cases:
        with open_engines(runtime_assets.engines, runtime_assets.checkpoint, backend=backend, device="cuda", precision=precision) as engines:
            labels = _clip_labels(engines, clip)
        for t in range(len(clip.frames)):
            for object_id in (1, 2):
                assert iou(labels[t] == object_id, expected[t] == object_id) >= threshold, (backend, precision, t)


@pytest.mark.tensorrt
def test_tensorrt_plans_run_when_present(runtime_assets: RuntimeAssets) -> None:
    pytest.importorskip("tensorrt")
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    if not load_manifest(runtime_assets.engines).precisions("tensorrt"):
        pytest.skip("the test bundle has no TensorRT plans (exported without --fp16 / tensorrt)")
    with open_engines(runtime_assets.engines, backend="tensorrt") as engines:
        assert engines.backend == "tensorrt"


def test_closed_engine_and_wrong_inputs_raise_one_line_errors() -> None:
    from eamstcn.runtime.engines.base import EngineError, TensorSpec
    from eamstcn.runtime.engines.torch_engine import TorchEngine

    specs = (TensorSpec("image", (1, 3, 32, 32)),)
    engine = TorchEngine("key_encoder", lambda image: (image, image, image, image), specs, ())
    with pytest.raises(EngineError, match="key_encoder takes inputs"):
        engine(wrong=torch.zeros(1, 3, 32, 32))
    engine.close()
    with pytest.raises(EngineError, match="key_encoder engine is closed"):
        engine(image=torch.zeros(1, 3, 32, 32))

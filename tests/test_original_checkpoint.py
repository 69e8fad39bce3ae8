"""Checkpoints of the original EamStcn research code: detection, renaming by rule, the one
"converted" line in every command, refusals in one line, and parity with what the
research code computes on the seed-b1b1 fixture (PyTorch and exported ONNX).

Command tests use a TINY model written in the original layout (our names mapped back by
the inverse rules), so they stay small. The fixture tests read tests/fixtures/seed-b1b1
(its README says what each file is).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from eamstcn import ops
from eamstcn.checkpoint import FORMAT_TAG, CheckpointError, load_checkpoint, save_checkpoint
from eamstcn.config import TINY, ModelConfig
from eamstcn.export.manifest import MANIFEST_NAME
from eamstcn.network import EamStcn
from eamstcn.original_checkpoint import (
    ORIGINAL_BN_EPS,
    UnsupportedOriginal,
    convert,
    original_state_dict,
    to_original,
)
from tests.helpers.models import load_model, network_outputs

SEED = Path(__file__).resolve().parent / "fixtures" / "seed-b1b1"
CONVERTED = "converted an original EamStcn checkpoint"
#: Fixture tolerance: max abs error / max abs of the expected output.
TOLERANCE = 1e-5


# ----------------------------------------------------------------------------- helpers


def _tiny_model() -> EamStcn:
    """TINY with random weights and random BatchNorm statistics (so eps and every BN matter)."""
    torch.manual_seed(3)
    model = EamStcn(TINY)
    generator = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
    return model.eval()


def _write_original(path: Path, state: dict[str, torch.Tensor]) -> Path:
    """As the original trainer saves: state dict, optimiser and scheduler state."""
    torch.save(
        {
            "state_dict": state,
            "optimiser": {"state": {}, "param_groups": [{"lr": 1e-5, "betas": (0.9, 0.999), "params": list(range(len(state)))}]},
            "scheduler": {"step_size": 10000, "gamma": 0.5, "base_lrs": [1e-5], "last_epoch": 3},
        },
        path,
    )
    return path


@pytest.fixture(scope="module")
def tiny() -> EamStcn:
    return _tiny_model()


@pytest.fixture
def tiny_original(tiny: EamStcn, tmp_path: Path) -> Path:
    """A fresh file per test: each command announces a file once per process."""
    return _write_original(tmp_path / "tiny_3.pth.tar", to_original(tiny.state_dict(), TINY))


def _seed_state() -> dict[str, torch.Tensor]:
    """The seed model's names and shapes, as meta tensors (no memory)."""
    keys = json.loads((SEED / "seed_state_keys.json").read_text())
    return {name: torch.empty(shape, dtype=getattr(torch, dtype), device="meta") for name, shape, dtype in keys}


def _converted_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if CONVERTED in line]


def _one_error_line(result, contains: str) -> str:
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert contains in lines[0], lines[0]
    return lines[0]


# ----------------------------------------------------------------------------- detection and names


def test_detects_the_original_layout_and_nothing_else(tiny: EamStcn) -> None:
    original = to_original(tiny.state_dict(), TINY)
    assert original_state_dict({"state_dict": original, "optimiser": {}, "scheduler": {}}) == original
    assert original_state_dict(original) == original  # a bare state dict
    ddp = {f"module.{name}": tensor for name, tensor in original.items()}
    assert original_state_dict({"state_dict": ddp}) == original
    assert original_state_dict(tiny.state_dict()) is None  # ours, without the format tag
    assert original_state_dict({"format": FORMAT_TAG, "weights": tiny.state_dict()}) is None
    assert original_state_dict({"state_dict": {"0.weight": torch.zeros(1)}}) is None
    assert original_state_dict([1, 2]) is None


def test_every_seed_name_maps_one_to_one_with_equal_shapes() -> None:
    state = _seed_state()
    assert len(state) == 674
    converted = convert(state)
    assert converted.config == ModelConfig(
        key_backbone="tf_efficientnetv2_b1", value_backbone="tf_efficientnetv2_b1", key_dim=64, value_dim=512,
        expansion_bn_eps=ORIGINAL_BN_EPS,
    )
    assert converted.summary == "B1/B1, key dim 64, value dim 512, 674 tensors"
    # 1:1: every original tensor object lands under exactly one of our names.
    assert len(converted.weights) == 674
    assert {id(t) for t in converted.weights.values()} == {id(t) for t in state.values()}
    with torch.device("meta"):
        own = EamStcn(converted.config).state_dict()
    assert set(converted.weights) == set(own)
    assert all(converted.weights[name].shape == own[name].shape for name in own)
    # And the inverse rules give back exactly the original names.
    assert to_original(converted.weights, converted.config).keys() == state.keys()


def _by_shape_walk(original: dict[str, torch.Tensor], ours: dict[str, torch.Tensor]) -> dict[str, str]:
    """The tempting wrong conversion: pair names in order, each with the next unused name of equal shape."""
    free = list(ours)
    pairs = {}
    for name, tensor in original.items():
        match = next(candidate for candidate in free if ours[candidate].shape == tensor.shape)
        free.remove(match)
        pairs[name] = match
    return pairs


def test_resblock_shortcut_is_never_taken_for_conv1() -> None:
    """In the width-changing ResBlocks the shortcut and conv1 have one shape: only names tell them apart."""
    state = _seed_state()
    converted = convert(state)
    by_identity = {id(tensor): name for name, tensor in converted.weights.items()}
    pairs = {
        "feature_fusion.block1": "fusion.block1",
        "decoder.compress": "decoder.fuse",
        "decoder.up_16_8.out_conv": "decoder.up_8.out_conv",
    }
    with torch.device("meta"):
        own = EamStcn(converted.config).state_dict()
    wrong = _by_shape_walk(state, own)
    for theirs, ours in pairs.items():
        for leaf in ("weight", "bias"):
            shortcut, conv1 = state[f"{theirs}.downsample.{leaf}"], state[f"{theirs}.conv1.{leaf}"]
            assert shortcut.shape == conv1.shape  # the trap is real
            assert by_identity[id(shortcut)] == f"{ours}.shortcut.{leaf}"
            assert by_identity[id(conv1)] == f"{ours}.conv1.{leaf}"
        # A by-shape walk would have loaded the shortcut into conv1.
        assert wrong[f"{theirs}.downsample.weight"] == f"{ours}.conv1.weight"


def test_tiny_original_file_loads_to_the_same_network(tiny: EamStcn, tiny_original: Path, capsys) -> None:
    checkpoint = load_checkpoint(tiny_original)
    assert checkpoint.config == TINY and checkpoint.config.expansion_bn_eps == ORIGINAL_BN_EPS
    assert checkpoint.training is None and checkpoint.metadata["converted_from"] == "original EamStcn"
    restored = load_model(tiny_original)  # a second load of the same file: still one line
    for before, after in zip(network_outputs(tiny), network_outputs(restored), strict=True):
        assert torch.equal(before, after)  # shortcut/conv1 swapped would change every output
    lines = _converted_lines(capsys.readouterr().err)
    assert lines == [f"notice: {CONVERTED} (B0/B0, key dim 64, value dim 128, {len(tiny.state_dict())} tensors): {tiny_original}"]


# ----------------------------------------------------------------------------- refusals


def test_whole_pickled_model_is_refused_with_the_way_out(tmp_path: Path) -> None:
    from eamstcn.export.cli import app

    path = tmp_path / "model.pth"
    torch.save(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)), path)
    result = CliRunner().invoke(app, ["--checkpoint", str(path), "--out", str(tmp_path / "engines"), "--size", "64x64"])
    line = _one_error_line(result, "is a whole pickled model, not a state dict")
    assert line.startswith("error: ") and not (tmp_path / "engines").exists()
    # The command in the message works (where the model's classes import) and gives a state dict.
    command = re.search(r'python -c "(.+?)" and pass (\S+)$', line)
    assert command is not None, line
    subprocess.run([sys.executable, "-c", command.group(1)], cwd=tmp_path, check=True, timeout=120)
    written = torch.load(tmp_path / command.group(2), weights_only=True)
    assert set(written["state_dict"]) >= {"0.weight", "0.bias", "1.running_var"}


def test_other_pickled_objects_keep_their_message(tmp_path: Path) -> None:
    path = tmp_path / "odd.pth"
    torch.save({"model": Path("x")}, path)
    with pytest.raises(CheckpointError, match="pickled Python objects"):
        load_checkpoint(path)


def test_expansion_wider_than_values_is_one_line(tiny: EamStcn, tmp_path: Path) -> None:
    """The original's phase-2 script expands to 1024 with 512-wide values; we tie the two."""
    from eamstcn.export.cli import app

    state = to_original(tiny.state_dict(), TINY)
    name = "key_encoder.feature_expansion.block1.project_conv.weight"
    state[name] = torch.zeros(2 * TINY.value_dim, *state[name].shape[1:])
    path = _write_original(tmp_path / "wide_1.pth.tar", state)
    result = CliRunner().invoke(app, ["--checkpoint", str(path), "--out", str(tmp_path / "engines"), "--size", "64x64"])
    _one_error_line(result, "its feature expansion is 256 wide but its values are 128; eamstcn ties the two widths")


def test_resnet_and_custom_encoders_are_named(tiny: EamStcn, tmp_path: Path) -> None:
    state = to_original(tiny.state_dict(), TINY)
    resnet = {name: tensor for name, tensor in state.items() if not name.startswith("key_encoder.") or "feature_expansion" in name}
    resnet |= {"key_encoder.conv1.weight": torch.zeros(64, 3, 7, 7), "key_encoder.layer1.0.conv1.weight": torch.zeros(64, 64, 3, 3)}
    with pytest.raises(UnsupportedOriginal, match="its key encoder is a ResNet; eamstcn builds EfficientNetV2 encoders only"):
        convert(resnet)
    custom = {name: tensor for name, tensor in state.items() if not name.startswith("value_encoder.")}
    custom["value_encoder.features.0.weight"] = torch.zeros(8, 5, 3, 3)
    path = _write_original(tmp_path / "custom_1.pth.tar", custom)
    with pytest.raises(CheckpointError, match="is an original EamStcn checkpoint, but its value encoder is not") as caught:
        load_checkpoint(path)
    assert "\n" not in str(caught.value)
    extra = state | {"decoder.up_8_4.attention.weight": torch.zeros(1)}
    with pytest.raises(UnsupportedOriginal, match="1 of its tensors have names eamstcn has no rule for"):
        convert(extra)


# ----------------------------------------------------------------------------- every command says it once


@pytest.fixture(scope="module")
def davis_layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from eamstcn.data.synth import generate_dataset

    root = tmp_path_factory.mktemp("d17")
    generate_dataset(root, sequences=1, frames=4, height=64, width=64, objects=2, seed=11)
    return root


def test_eamstcn_run_says_converted_once(tiny_original: Path, davis_layout: Path, tmp_path: Path) -> None:
    from eamstcn.runtime.cli import app

    sequence = next((davis_layout / "JPEGImages" / "480p").iterdir())
    mask = davis_layout / "Annotations" / "480p" / sequence.name / "00000.png"
    result = CliRunner().invoke(app, ["--frames", str(sequence), "--mask", str(mask), "--checkpoint", str(tiny_original),
                                      "--backend", "torch", "--device", "cpu", "--output", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert len(_converted_lines(result.stderr)) == 1, result.stderr
    assert len(list((tmp_path / "out" / "masks").glob("*.png"))) == 4


def test_eamstcn_eval_says_converted_once(tiny_original: Path, davis_layout: Path, tmp_path: Path) -> None:
    from eamstcn.runtime.eval_cli import app

    result = CliRunner().invoke(app, ["--data", str(davis_layout), "--checkpoint", str(tiny_original),
                                      "--out", str(tmp_path / "out"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert len(_converted_lines(result.stderr)) == 1, result.stderr
    assert "ALL" in result.stdout


def test_eamstcn_export_says_converted_once(tiny_original: Path, tmp_path: Path) -> None:
    from eamstcn.export.cli import app

    out = tmp_path / "engines"
    result = CliRunner().invoke(app, ["--checkpoint", str(tiny_original), "--out", str(out), "--size", "64x64", "--no-simplify"])
    assert result.exit_code == 0, result.output
    assert len(_converted_lines(result.stderr)) == 1, result.stderr
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["model_config"] == TINY.to_dict()


def test_eamstcn_train_init_says_converted_once(tiny_original: Path, davis_layout: Path, tmp_path: Path) -> None:
    from eamstcn.training.cli import app

    result = CliRunner().invoke(app, ["phase2", "--data", str(davis_layout), "--out", str(tmp_path / "run"), "--preset", "tiny",
                                      "--init", str(tiny_original), "--iterations", "1", "--batch-size", "1", "--workers", "0", "--quiet"])
    assert result.exit_code == 0, result.output
    assert len(_converted_lines(result.stderr)) == 1, result.stderr
    assert load_checkpoint(tmp_path / "run" / "latest.pth").config == TINY


def test_our_own_checkpoints_say_nothing(tiny: EamStcn, tmp_path: Path, capsys) -> None:
    save_checkpoint(tmp_path / "ours.pth", tiny)
    load_checkpoint(tmp_path / "ours.pth")
    assert _converted_lines(capsys.readouterr().err) == []


# ----------------------------------------------------------------------------- seed-b1b1 parity


@pytest.fixture(scope="module")
def seed_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("seed") / "seed_0.pth.tar"
    subprocess.run([sys.executable, str(SEED / "make_seed_checkpoint.py"), str(path)], check=True, timeout=300,
                   capture_output=True)
    return path


@pytest.fixture(scope="module")
def expected() -> dict[str, np.ndarray]:
    """The research code's inputs whole and its outputs sampled (``NAME.sample``, every
    ``NAME.every``-th element, and ``NAME.max_abs`` of the whole output)."""
    with np.load(SEED / "expected_sample.npz") as data:
        return {name: data[name] for name in data.files}


def _image(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (1, 3, H, W) float32, ImageNet-normalised (240x432 needs no pad)."""
    tensor = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255
    return ops.normalize_image(tensor).unsqueeze(0).numpy()


def _relative_errors(run_key, run_value, run_decoder, expected: dict[str, np.ndarray]) -> dict[str, float]:
    """Each output's max abs error over the expected output's max abs; the three callables
    take and return numpy arrays in graph order. The error is taken over the fixture's
    sample of each output, the max abs over the whole output."""
    got: dict[str, np.ndarray] = {}
    for frame in (0, 5):
        key, f16x, f8, f4 = run_key(_image(expected[f"image{frame}"]))
        got |= {f"key{frame}": key, f"f16x{frame}": f16x, f"f8_{frame}": f8, f"f4_{frame}": f4}
    (got["value0"],) = run_value(_image(expected["image0"]), expected["masks0"], expected["others0"], got["f16x0"])
    # The decoder on the given readout and this run's frame-5 features.
    (got["logits5"],) = run_decoder(expected["readout5"], got["f16x5"], got["f8_5"], got["f4_5"])
    errors = {}
    for name, value in got.items():
        sample = value.reshape(-1)[:: int(expected[f"{name}.every"])]
        errors[name] = float(np.abs(sample - expected[f"{name}.sample"]).max() / expected[f"{name}.max_abs"])
    return errors


def _report(label: str, errors: dict[str, float]) -> None:
    print(f"{label}: " + ", ".join(f"{name} {error:.2e}" for name, error in errors.items()))
    assert all(error < TOLERANCE for error in errors.values()), errors


def test_seed_fixture_matches_the_research_code_in_pytorch(seed_checkpoint: Path, expected) -> None:
    model = load_model(seed_checkpoint)
    assert model.config.expansion_bn_eps == ORIGINAL_BN_EPS

    def through(method):
        @torch.no_grad()
        def run(*arrays: np.ndarray) -> list[np.ndarray]:
            outputs = method(*(torch.from_numpy(array) for array in arrays))
            return [tensor.numpy() for tensor in (outputs if isinstance(outputs, tuple) else (outputs,))]

        return run

    errors = _relative_errors(through(model.encode_key), through(model.encode_value), through(model.decode), expected)
    _report("torch", errors)


@pytest.fixture(scope="module")
def seed_bundle(seed_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The one export of this module: B1/B1 at 240x432, fp32, through the export pipeline."""
    from eamstcn.export.bundle import ExportConfig, export_bundle

    out = tmp_path_factory.mktemp("seed-export") / "engines"
    export_bundle(ExportConfig(checkpoint=seed_checkpoint, out=out, frame_size=(240, 432), trt=False))
    return out


# 75-105 s wall on 2 CPU cores shared with a training run, ~40 s of CPU (the export is most
# of it): kept in the default suite, as the one check of the exported graphs on real weights.
def test_seed_fixture_matches_the_research_code_in_onnx(seed_bundle: Path, expected) -> None:
    import onnxruntime as ort

    from eamstcn.graph_spec import GRAPH_IO

    def through(graph: str):
        session = ort.InferenceSession(str(seed_bundle / f"{graph}.onnx"), providers=["CPUExecutionProvider"])
        names = GRAPH_IO[graph][0]
        return lambda *arrays: session.run(None, dict(zip(names, arrays, strict=True)))

    manifest = json.loads((seed_bundle / MANIFEST_NAME).read_text())
    assert manifest["model_config"]["expansion_bn_eps"] == ORIGINAL_BN_EPS
    errors = _relative_errors(through("key_encoder"), through("value_encoder"), through("decoder"), expected)
    _report("onnx", errors)

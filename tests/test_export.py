"""eamstcn-export on a tiny checkpoint (B0 encoders, 64x64 frames).

One export (fp32 + fp16, through the CLI) is shared by the module; the bad-input cases
fail before any tracing and are cheap.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from typer.testing import CliRunner

from eamstcn import ops
from eamstcn.checkpoint import save_checkpoint
from eamstcn.config import TINY
from eamstcn.export.bundle import ExportConfig, ExportError, export_bundle
from eamstcn.export.cli import app
from eamstcn.export.manifest import FORMAT_TAG, MANIFEST_NAME
from eamstcn.export.parity import error_stats
from eamstcn.graph_spec import GRAPH_IO, GRAPHS
from eamstcn.network import EamStcn, others_from_masks
from eamstcn.sizes import parse_size
from tests.helpers.models import load_model
from tests.helpers.onnx_checks import fp16_weight_count, fp32_weights

SIZE = 64
runner = CliRunner()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("checkpoint") / "tiny.pth"
    save_checkpoint(path, EamStcn(TINY))
    return path


@pytest.fixture(scope="module")
def model(checkpoint: Path) -> EamStcn:
    return load_model(checkpoint)


@pytest.fixture(scope="module")
def bundle(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """Export into a folder that already holds an (old) bundle: it must be replaced."""
    out = tmp_path_factory.mktemp("export") / "engines"
    out.mkdir()
    (out / MANIFEST_NAME).write_text(json.dumps({"format": FORMAT_TAG, "version": 1}))
    (out / "stale.onnx").write_bytes(b"old")
    result = runner.invoke(app, ["--checkpoint", str(checkpoint), "--out", str(out), "--size", f"{SIZE}x{SIZE}", "--fp16"])
    assert result.exit_code == 0, result.output
    return out, result.output


def leftovers(folder: Path) -> list[str]:
    """Hidden staging / aside folders the exporter might have left behind."""
    return sorted(path.name for path in folder.iterdir() if path.name.startswith("."))


def test_bundle_files_and_replacement(bundle: tuple[Path, str]) -> None:
    out, _ = bundle
    expected = {MANIFEST_NAME} | {f"{name}.onnx" for name in GRAPHS} | {f"{name}.fp16.onnx" for name in GRAPHS}
    assert {path.name for path in out.iterdir()} == expected  # stale.onnx of the old bundle is gone
    assert leftovers(out.parent) == []


def test_manifest_fields(bundle: tuple[Path, str], checkpoint: Path) -> None:
    out, _ = bundle
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["format"] == FORMAT_TAG and manifest["version"] == 1
    assert manifest["model_config"] == TINY.to_dict()
    assert manifest["frame_size"] == [SIZE, SIZE] and manifest["padded_size"] == [SIZE, SIZE]
    assert manifest["pads"] == [0, 0, 0, 0] and manifest["opset"] == 17 and manifest["max_objects"] == 4
    assert manifest["normalization"]["input"] == "RGB/255"
    assert manifest["checkpoint"]["file"] == "tiny.pth" and len(manifest["checkpoint"]["sha256"]) == 64
    assert manifest["versions"]["onnx"] == onnx.__version__ and manifest["versions"]["tensorrt"] is None
    for name in GRAPHS:
        graph = manifest["graphs"][name]
        input_names, output_names = GRAPH_IO[name]
        assert [item["name"] for item in graph["inputs"]] == list(input_names)
        assert [item["name"] for item in graph["outputs"]] == list(output_names)
        for file in graph["files"]:
            assert (out / file["path"]).stat().st_size == file["bytes"]
            assert file["dtype"] == {"fp32": "float32", "fp16": "float16"}[file["precision"]]
        for label in ("K=1", "K=3"):
            assert graph["parity"]["onnx/fp32"][label]["max_rel"] <= 1e-4
    shapes = {item["name"]: item["shape"] for item in manifest["graphs"]["decoder"]["inputs"]}
    assert shapes["readout"] == ["K", TINY.value_dim, SIZE // 16, SIZE // 16]
    assert manifest["graphs"]["decoder"]["outputs"][0]["shape"] == ["K", 1, SIZE, SIZE]


def test_cli_prints_summary(bundle: tuple[Path, str]) -> None:
    _, output = bundle
    assert "max rel K=1" in output and "decoder.fp16.onnx" in output
    assert "TensorRT engines skipped" in output  # tensorrt is not installed in CI


def _graph_inputs(model: EamStcn, num_objects: int, seed: int) -> dict[str, dict[str, torch.Tensor]]:
    """Inputs for each graph from the PyTorch chain on a smooth random frame with blob masks."""
    generator = torch.Generator().manual_seed(seed)
    rgb = torch.nn.functional.interpolate(torch.rand(1, 3, 8, 8, generator=generator), size=(SIZE, SIZE), mode="bilinear")[0]
    image = ops.normalize_image(rgb).unsqueeze(0)
    blobs = torch.nn.functional.interpolate(torch.rand(num_objects, 1, 4, 4, generator=generator), size=(SIZE, SIZE), mode="bilinear")
    masks = torch.softmax(blobs * 20, dim=0)
    with torch.no_grad():
        key, f16x, f8, f4 = model.encode_key(image)
        value = model.encode_value(image, masks, others_from_masks(masks), f16x)
        readout = ops.softmax_readout(key.flatten(2), value.flatten(2), key.flatten(2)).view_as(value)
    return {
        "key_encoder": {"image": image},
        "value_encoder": {"image": image, "masks": masks, "others": others_from_masks(masks), "f16x": f16x},
        "decoder": {"readout": readout, "f16x": f16x, "f8": f8, "f4": f4},
    }


def _quiet_options() -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # shared CI cores
    return options


def _torch_outputs(model: EamStcn, graph: str, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    method = {"key_encoder": model.encode_key, "value_encoder": model.encode_value, "decoder": model.decode}[graph]
    with torch.no_grad():
        outputs = method(*inputs.values())
    return list(outputs) if isinstance(outputs, tuple) else [outputs]


@pytest.mark.parametrize("num_objects", [1, 3])
def test_fp32_parity_with_onnxruntime(bundle: tuple[Path, str], model: EamStcn, num_objects: int) -> None:
    out, _ = bundle
    inputs = _graph_inputs(model, num_objects, seed=7)
    for graph in GRAPHS:
        session = ort.InferenceSession(str(out / f"{graph}.onnx"), _quiet_options(), providers=["CPUExecutionProvider"])
        feeds = {name: tensor.numpy() for name, tensor in inputs[graph].items()}
        actual = session.run(list(GRAPH_IO[graph][1]), feeds)
        for expected, got in zip(_torch_outputs(model, graph, inputs[graph]), actual):
            assert got.shape == tuple(expected.shape)
            assert error_stats(expected.numpy(), got).max_rel <= 1e-4, graph


def test_fp16_files_are_fp16(bundle: tuple[Path, str]) -> None:
    out, _ = bundle
    for graph in GRAPHS:
        path = out / f"{graph}.fp16.onnx"
        onnx.checker.check_model(str(path), full_check=True)
        model = onnx.load(str(path))
        assert {value.type.tensor_type.elem_type for value in [*model.graph.input, *model.graph.output]} == {
            onnx.TensorProto.FLOAT16
        }
        assert fp16_weight_count(path) > 0 and fp32_weights(path) == [], graph


def test_fp16_runs_in_onnxruntime(bundle: tuple[Path, str], model: EamStcn) -> None:
    out, _ = bundle
    inputs = _graph_inputs(model, 3, seed=11)["decoder"]
    session = ort.InferenceSession(str(out / "decoder.fp16.onnx"), _quiet_options(), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {name: tensor.numpy().astype(np.float16) for name, tensor in inputs.items()})
    assert logits.dtype == np.float16
    assert error_stats(_torch_outputs(model, "decoder", inputs)[0].numpy(), logits).max_rel < 1e-2


def _assert_clean_failure(result, folder: Path, out: Path) -> None:
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert "Traceback" not in result.output
    assert not out.exists()
    assert leftovers(folder) == []


def test_missing_checkpoint(tmp_path: Path) -> None:
    result = runner.invoke(app, ["--checkpoint", str(tmp_path / "nope.pth"), "--out", str(tmp_path / "engines")])
    _assert_clean_failure(result, tmp_path, tmp_path / "engines")
    assert "not found" in result.output


def test_not_a_checkpoint(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pth"
    junk.write_bytes(os.urandom(256))
    result = runner.invoke(app, ["--checkpoint", str(junk), "--out", str(tmp_path / "engines")])
    _assert_clean_failure(result, tmp_path, tmp_path / "engines")
    assert "checkpoint" in result.output


def test_output_under_a_file(checkpoint: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    out = blocker / "sub" / "engines"
    result = runner.invoke(app, ["--checkpoint", str(checkpoint), "--out", str(out), "--size", "64x64"])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert blocker.read_text() == "x" and leftovers(tmp_path) == []


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")
def test_output_on_a_read_only_filesystem(checkpoint: Path) -> None:
    # /proc refuses new folders even to root, unlike a chmod-ed folder
    result = runner.invoke(app, ["--checkpoint", str(checkpoint), "--out", "/proc/eamstcn-test/engines", "--size", "64x64"])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert "cannot create" in result.output


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores folder permissions")
def test_unwritable_output_folder(checkpoint: Path, tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        result = runner.invoke(app, ["--checkpoint", str(checkpoint), "--out", str(locked / "engines"), "--size", "64x64"])
        _assert_clean_failure(result, locked, locked / "engines")
    finally:
        locked.chmod(0o700)


@pytest.mark.parametrize("size", ["16x64", "64x31", "24"])
def test_size_too_small(checkpoint: Path, tmp_path: Path, size: str) -> None:
    result = runner.invoke(app, ["--checkpoint", str(checkpoint), "--out", str(tmp_path / "engines"), "--size", size])
    _assert_clean_failure(result, tmp_path, tmp_path / "engines")
    assert "too small" in result.output


def test_refuses_a_folder_that_is_not_a_bundle(checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"precious")
    result = runner.invoke(app, ["--checkpoint", str(checkpoint), "--out", str(out), "--size", "64x64"])
    assert result.exit_code == 2 and "not an engine bundle" in result.output
    assert [path.name for path in out.iterdir()] == ["holiday.jpg"] and leftovers(tmp_path) == []


def test_parity_failure_leaves_nothing(checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "nested" / "engines"
    config = ExportConfig(checkpoint=checkpoint, out=out, frame_size=(SIZE, SIZE), simplify=False, tolerance=1e-30)
    with pytest.raises(ExportError, match="beyond tolerance"):
        export_bundle(config)
    assert list(tmp_path.iterdir()) == []  # not even the parent folder it created


def test_parse_size() -> None:
    assert parse_size("480") == (480, 854)
    assert parse_size("720") == (720, 1280)
    assert parse_size("240") == (240, 426)
    assert parse_size("360x640") == (360, 640)
    assert ops.padded_size(*parse_size("480")) == (480, 864)
    with pytest.raises(ValueError, match="invalid size"):
        parse_size("big")

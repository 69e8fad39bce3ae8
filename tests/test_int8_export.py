"""INT8 export: calibration sources, the quantization recipe, node groups, the bundle and
its manifest, the CLI and its one-line errors. TINY model, 64x56 frames."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from eamstcn.cpu_features import cpu_flags, detect_target, int8_saturation_risk
from eamstcn.export.calibration_source import ellipse_mask, load_calibration
from eamstcn.export.errors import ExportError
from eamstcn.export.int8_target import recipe
from eamstcn.graph_spec import GRAPHS
from tests.helpers.assets import CALIBRATION_FRAMES, FRAME_SIZE, RuntimeAssets, export_int8_bundle

pytest.importorskip("onnxruntime.quantization")


# --------------------------------------------------------------------------- recipe
def test_recipe_follows_onnxruntime_guidance_per_cpu() -> None:
    avx2 = recipe("x86-avx2")
    assert (avx2.activation_type, avx2.weight_type, avx2.reduce_range, avx2.per_channel) == ("uint8", "int8", True, True)
    vnni = recipe("x86-vnni")
    assert (vnni.activation_type, vnni.reduce_range) == ("uint8", False)
    arm = recipe("arm")
    assert (arm.activation_type, arm.reduce_range) == ("int8", False)
    assert recipe("auto", machine="x86_64", flags={"avx2", "fma"}).reduce_range is True
    assert recipe("auto", machine="x86_64", flags={"avx2", "avx512f", "avx512_vnni"}).target == "x86-vnni"
    assert recipe("auto", machine="aarch64", flags={"asimd", "asimddp"}).target == "arm"
    with pytest.raises(ValueError, match="unknown INT8 target"):
        recipe("x86-sse")


def test_cpu_flags_and_saturation_warning() -> None:
    assert cpu_flags("processor : 0\nflags : fpu avx2 avx512_vnni\n") == {"fpu", "avx2", "avx512_vnni"}
    assert cpu_flags("Features : fp asimd asimddp\n") == {"fp", "asimd", "asimddp"}
    assert detect_target("x86_64", {"avx2"})[0] == "x86-avx2"
    full_8_bit = {"activation_type": "uint8", "reduce_range": False}
    assert "re-export with --int8-target x86-avx2" in int8_saturation_risk(full_8_bit, "x86_64", {"avx2"})
    assert int8_saturation_risk(full_8_bit, "x86_64", {"avx2", "avx_vnni"}) is None
    assert int8_saturation_risk({"activation_type": "uint8", "reduce_range": True}, "x86_64", {"avx2"}) is None


# --------------------------------------------------------------------------- calibration sources
def test_default_calibration_is_generated_clips_at_the_frame_size() -> None:
    source = load_calibration(None, (64, 56), 8)
    assert source.kind == "generated" and "eamstcn.data.synth" in source.description
    assert [clip.num_objects for clip in source.clips] == [1, 2]
    assert all(clip.frames.shape[1:] == (64, 56, 3) for clip in source.clips)
    assert source.to_manifest()["frames"] == 8


def test_calibration_from_images_video_and_davis(tmp_path: Path) -> None:
    from eamstcn.data.davis_io import write_frame
    from eamstcn.data.synth import generate_dataset, generate_sequence, write_video

    sequence = generate_sequence(3, frames=6, height=64, width=96, objects=1)
    folder = tmp_path / "frames"
    for t, frame in enumerate(sequence.frames):
        write_frame(folder / f"{t:05d}.png", frame)
    images = load_calibration(folder, FRAME_SIZE, 4)
    assert images.kind == "images" and images.frames == 4
    assert np.array_equal(images.clips[0].first_mask, ellipse_mask(64, 96)) and "ellipse" in images.description

    video = load_calibration(write_video(tmp_path / "clip.mp4", sequence.frames, fps=12), FRAME_SIZE, 5)
    assert video.kind == "video" and video.frames == 5

    generate_dataset(tmp_path / "davis", sequences=3, frames=5, height=64, width=64, objects=2, seed=11)
    davis = load_calibration(tmp_path / "davis", FRAME_SIZE, 6)
    assert davis.kind == "davis" and len(davis.clips) == 3
    assert all(clip.num_objects == 2 for clip in davis.clips)  # first masks come from Annotations
    names = [clip.name for clip in davis.clips]
    chosen = load_calibration(tmp_path / "davis", FRAME_SIZE, 6, sequences=(names[2], names[0]))
    assert [clip.name for clip in chosen.clips] == [names[2], names[0]] and names[2] in chosen.description
    with pytest.raises(ExportError, match="not in .*: nope"):
        load_calibration(tmp_path / "davis", FRAME_SIZE, 6, sequences=("nope",))
    with pytest.raises(ExportError, match="needs --calibration pointing at a DAVIS-layout folder"):
        load_calibration(folder, FRAME_SIZE, 6, sequences=(names[0],))


@pytest.mark.parametrize("case", ["missing", "empty", "one image", "not a video"])
def test_bad_calibration_sources_are_one_clear_line(case: str, tmp_path: Path) -> None:
    path = tmp_path / "calib"
    if case == "empty":
        path.mkdir()
    elif case == "one image":
        from eamstcn.data.davis_io import write_frame

        write_frame(path / "00000.png", np.zeros((32, 32, 3), np.uint8))
    elif case == "not a video":
        path = tmp_path / "notes.txt"
        path.write_text("hello")
    with pytest.raises(ExportError) as info:
        load_calibration(path, FRAME_SIZE, 8)
    assert "--calibration" in str(info.value) and "\n" not in str(info.value)


# --------------------------------------------------------------------------- node groups
def test_node_groups_find_the_squeeze_excitation_and_silu_nodes(runtime_assets: RuntimeAssets) -> None:
    from eamstcn.export.quantize import node_groups

    key = onnx.load(str(runtime_assets.engines / "key_encoder.onnx"))
    groups = node_groups(key)
    ops = {node.name: node.op_type for node in key.graph.node}
    assert {"se_gates", "silu", "depthwise", "outputs", "stem"} <= set(groups)
    assert {ops[name] for name in groups["se_gates"]} >= {"ReduceMean", "Conv", "Sigmoid", "Mul"}
    assert sum(ops[name] == "ReduceMean" for name in groups["se_gates"]) == sum(op == "ReduceMean" for op in ops.values())
    assert {ops[name] for name in groups["silu"]} == {"Sigmoid", "Mul"}
    assert not set(groups["silu"]) & set(groups["se_gates"])
    decoder = node_groups(onnx.load(str(runtime_assets.engines / "decoder.onnx")))
    assert "se_gates" not in decoder and "silu" not in decoder


# --------------------------------------------------------------------------- the bundle
def _quantized_types(path: Path) -> set[int]:
    graph = onnx.load(str(path)).graph
    types = set()
    for node in graph.node:
        if node.op_type == "QuantizeLinear" and len(node.input) > 2:
            zero = next((i for i in graph.initializer if i.name == node.input[2]), None)
            if zero is not None:
                types.add(zero.data_type)
    return types


def test_int8_bundle_files_and_manifest(int8_bundle: Path) -> None:
    manifest = json.loads((int8_bundle / "manifest.json").read_text())
    assert manifest["precisions"] == ["fp32", "int8"]
    section = manifest["int8"]
    assert section["recipe"]["per_channel"] is True and section["format"].startswith("QDQ")
    assert section["calibration"]["kind"] == "generated" and section["calibration"]["frames"] == CALIBRATION_FRAMES
    assert set(section["kept_fp32"]) == set(GRAPHS) and section["fp32_graphs"] == []
    agreement = section["mask_agreement"]
    assert 0.0 <= agreement["mean_iou"] <= 1.0 and agreement["frames"] > 0
    for name in GRAPHS:
        entry = next(f for f in manifest["graphs"][name]["files"] if f["precision"] == "int8")
        assert entry == {**entry, "path": f"{name}.int8.onnx", "format": "onnx", "dtype": "float32"}
        assert (int8_bundle / entry["path"]).stat().st_size == entry["bytes"]
        assert (int8_bundle / entry["path"]).stat().st_size < (int8_bundle / f"{name}.onnx").stat().st_size
        parity = manifest["graphs"][name]["parity"]["onnx/int8"]
        assert {"K=1", "K=3", "held_out_vs_fp32_onnx"} <= set(parity)
        held_out = parity["held_out_vs_fp32_onnx"]
        assert 0 <= held_out["rel_rmse"] < 0.5 and held_out["inputs"] > 0
        graph = section["graphs"][name]
        assert graph["trials"][0]["kept_fp32"] == [] and graph["quantized_nodes"] > 0
        expected = onnx.TensorProto.UINT8 if section["recipe"]["activation_type"] == "uint8" else onnx.TensorProto.INT8
        assert expected in _quantized_types(int8_bundle / entry["path"])
    assert manifest["graphs"]["decoder"]["parity"]["onnx/int8"]["held_out_vs_fp32_onnx"]["mask_agreement"] > 0.5


def test_graphs_that_move_the_masks_stay_fp32(runtime_assets: RuntimeAssets, tmp_path: Path) -> None:
    """With a target no INT8 pipeline can meet, graphs go back to fp32 one by one while that
    helps; their INT8 entries then name the fp32 file, with a note."""
    result = export_int8_bundle(runtime_assets.checkpoint, tmp_path / "engines", int8_min_agreement=1.0, calibration_frames=6)
    section = result.manifest["int8"]
    kept = section["fp32_graphs"]
    assert kept, section["mask_agreement"]
    for name in kept:
        entry = next(f for f in result.manifest["graphs"][name]["files"] if f["precision"] == "int8")
        assert entry["path"] == f"{name}.onnx" and "note" in entry
        assert not (tmp_path / "engines" / f"{name}.int8.onnx").exists()
        assert section["kept_fp32"][name] == ["graph"]
    trials = section["mask_agreement"]["trials"]
    assert len(trials) >= 1 + len(GRAPHS) and trials[0]["int8"] == sorted(GRAPHS)


def test_graphs_int8_does_not_speed_up_stay_fp32(runtime_assets: RuntimeAssets, tmp_path: Path) -> None:
    """The speed rule: no graph is 100x faster in INT8, so all stay fp32, each with why."""
    result = export_int8_bundle(runtime_assets.checkpoint, tmp_path / "engines", int8_min_speedup=100.0, calibration_frames=4)
    section = result.manifest["int8"]
    assert sorted(section["fp32_graphs"]) == sorted(GRAPHS)
    assert set(section["speedup_on_exporting_cpu"]) == set(GRAPHS)
    assert all(reason.startswith("INT8 only") for reason in section["fp32_reasons"].values())
    assert section["mask_agreement"]["mean_iou"] == 1.0  # nothing left in INT8: the fp32 pipeline itself
    assert any("kept in fp32" in note for note in result.notes)


def test_export_cli_int8_and_its_errors(runtime_assets: RuntimeAssets, tmp_path: Path) -> None:
    from eamstcn.export.cli import app

    runner = CliRunner()
    empty = tmp_path / "empty"
    empty.mkdir()
    base = ["--checkpoint", str(runtime_assets.checkpoint), "--size", "64x56", "--no-simplify", "--no-trt"]
    for args, message in (
        (["--int8", "--calibration", str(tmp_path / "nope")], "no such file or folder"),
        (["--int8", "--calibration", str(empty)], "the folder is empty"),
        (["--calibration", str(empty)], "only used with --int8"),
        (["--int8", "--int8-target", "x86-sse"], "--int8-target"),
        (["--int8", "--calibration-frames", "1"], "at least 2"),
    ):
        out = tmp_path / "engines"
        result = runner.invoke(app, [*base, "--out", str(out), *args])
        assert result.exit_code == 2, result.output
        lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and message in lines[0], result.stderr
        assert "Traceback" not in result.output and not out.exists()

    frames = tmp_path / "frames"
    from eamstcn.data.davis_io import write_frame
    from eamstcn.data.synth import generate_sequence

    for t, frame in enumerate(generate_sequence(5, frames=6, height=64, width=56, objects=1).frames):
        write_frame(frames / f"{t:05d}.png", frame)
    out = tmp_path / "engines"
    result = runner.invoke(app, [*base, "--out", str(out), "--int8", "--calibration", str(frames), "--calibration-frames", "6",
                                 "--int8-target", "x86-avx2", "--int8-min-iou", "0"])
    assert result.exit_code == 0, result.output
    assert "decoder.int8.onnx" in result.stdout and "int8" in result.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["int8"]["calibration"]["kind"] == "images"
    assert manifest["int8"]["recipe"]["target"] == "x86-avx2" and manifest["int8"]["recipe"]["reduce_range"] is True

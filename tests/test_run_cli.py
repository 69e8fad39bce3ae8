"""``eamstcn-run`` end to end (CliRunner): outputs, added objects, DAVIS frames, and every
bad input ending in one line on stderr, a non-zero exit and no traceback."""

from __future__ import annotations

import builtins
import csv
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from eamstcn.data.davis_io import DAVIS_PALETTE, read_mask, write_frame
from tests.helpers.assets import RuntimeAssets, copy_bundle, count_video_frames, davis_root, write_mask
from tests.helpers.cli import assert_one_line_error, invoke

FRAMES = 12


@pytest.fixture(scope="module")
def clip():
    from eamstcn.data.synth import generate_sequence

    return generate_sequence(seed=7, frames=FRAMES, height=64, width=96, objects=2)


@pytest.fixture(scope="module")
def clip_files(clip, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from eamstcn.data.synth import write_video

    root = tmp_path_factory.mktemp("clip")
    folder = root / "frames"
    for t, frame in enumerate(clip.frames):
        write_frame(folder / f"{t:05d}.png", frame)
    return {
        "video": write_video(root / "clip.mp4", clip.frames, fps=12),
        "frames": folder,
        "mask": write_mask(root / "mask.png", clip.masks[0]),
        "object1": write_mask(root / "object1.png", (clip.masks[0] == 1).astype(np.uint8)),
        "square": write_mask(root / "square.png", np.ones((64, 64), dtype=np.uint8)),
        "empty": write_mask(root / "empty.png", np.zeros((64, 96), dtype=np.uint8)),
    }


# --------------------------------------------------------------------------- runs


def test_video_run_writes_masks_overlay_and_stats(runtime_assets: RuntimeAssets, clip_files, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = invoke(
        "--video", clip_files["video"], "--mask", clip_files["mask"], "--engines", runtime_assets.engines,
        "--output", out, "--save", "fixed", "--save-every", 3, "--memory-frames", 4,
    )
    assert result.exit_code == 0, result.output
    masks = sorted((out / "masks").glob("*.png"))
    assert len(masks) == FRAMES
    assert read_mask(masks[0]).shape == (64, 96)
    assert np.array_equal(read_mask(masks[0]), read_mask(clip_files["mask"]))  # frame 0 is the given mask
    assert count_video_frames(out / "overlay.mp4") == FRAMES
    rows = list(csv.DictReader(open(out / "stats.csv")))
    assert len(rows) == FRAMES and rows[0]["saved"] == "1" and float(rows[5]["total_ms"]) > 0
    assert sum(int(r["saved"]) for r in rows) == 1 + 3  # t=0, 3, 6, 9 (11 is the last)
    assert f"frames: {FRAMES}" in result.stdout and "onnxruntime" in result.stdout and "frames stored: 4" in result.stdout


def test_no_overlay_writes_masks_and_stats_only(runtime_assets: RuntimeAssets, clip_files, tmp_path: Path) -> None:
    """--no-overlay: no overlay.mp4 (whose writer holds a per-frame index until it closes),
    the same masks and stats.csv."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "overlay.mp4").write_bytes(b"an earlier run's video")
    result = invoke("--video", clip_files["video"], "--mask", clip_files["mask"], "--engines", runtime_assets.engines,
                    "--output", out, "--no-overlay")
    assert result.exit_code == 0, result.output
    assert "removed an earlier run's" in result.stderr
    assert not (out / "overlay.mp4").exists() and not list(out.glob(".*"))  # no temporary left either
    assert len(list((out / "masks").glob("*.png"))) == FRAMES
    assert len(list(csv.DictReader(open(out / "stats.csv")))) == FRAMES


def test_frames_checkpoint_added_object_and_resized_mask(runtime_assets: RuntimeAssets, clip, clip_files, tmp_path: Path) -> None:
    big_mask = write_mask(tmp_path / "big.png", np.repeat(np.repeat((clip.masks[0] == 1).astype(np.uint8), 2, 0), 2, 1))
    second = np.zeros((64, 96, 3), dtype=np.uint8)
    second[clip.masks[3] == 2] = DAVIS_PALETTE[2]  # RGB colour-coded: the palette colour of id 2
    Image.fromarray(second).save(tmp_path / "second.png")
    out = tmp_path / "out"
    result = invoke(
        "--frames", clip_files["frames"], "--mask", big_mask, "--checkpoint", runtime_assets.checkpoint,
        "--add-mask", f"3:{tmp_path / 'second.png'}", "--max-frames", 5, "--output", out,
    )
    assert result.exit_code == 0, result.output
    assert "resizing the mask" in result.stderr
    masks = [read_mask(p) for p in sorted((out / "masks").glob("*.png"))]
    assert len(masks) == 5
    assert set(np.unique(masks[0])) == {0, 1}
    assert np.array_equal(masks[3] == 2, clip.masks[3] == 2)  # the added object where drawn
    assert "objects: 2" in result.stdout and "torch" in result.stdout


def test_davis_frames_end_to_end(runtime_assets: RuntimeAssets, tmp_path: Path) -> None:
    root = davis_root()
    if root is None:
        pytest.skip("DAVIS-2016 not found (set EAMSTCN_DAVIS)")
    resolution = sorted(p.name for p in (root / "JPEGImages").iterdir() if p.is_dir())[0]
    sequence = sorted(p for p in (root / "JPEGImages" / resolution).iterdir() if p.is_dir())[0]
    annotation = sorted((root / "Annotations" / resolution / sequence.name).glob("*.png"))[0]
    out = tmp_path / "out"
    result = invoke("--frames", sequence, "--mask", annotation, "--engines", runtime_assets.engines, "--max-frames", 3, "--output", out)
    assert result.exit_code == 0, result.output
    masks = sorted((out / "masks").glob("*.png"))
    assert len(masks) == 3
    first_frame = sorted(sequence.iterdir())[0]
    with Image.open(first_frame) as image:
        width, height = image.size
    assert read_mask(masks[1]).shape == (height, width)  # back at the frames' own size


# --------------------------------------------------------------------------- errors


def test_camera_that_does_not_open(runtime_assets: RuntimeAssets, clip_files) -> None:
    assert_one_line_error(invoke("--camera", 99, "--mask", clip_files["mask"], "--engines", runtime_assets.engines), "camera 99 did not open")


def test_missing_video(runtime_assets: RuntimeAssets, clip_files, tmp_path: Path) -> None:
    assert_one_line_error(invoke("--video", tmp_path / "none.mp4", "--mask", clip_files["mask"], "--engines", runtime_assets.engines), "video not found")


def test_mask_of_another_aspect_ratio(runtime_assets: RuntimeAssets, clip_files, tmp_path: Path) -> None:
    result = invoke("--video", clip_files["video"], "--mask", clip_files["square"], "--engines", runtime_assets.engines, "--output", tmp_path)
    assert_one_line_error(result, "another aspect ratio")


def test_mask_with_no_object(runtime_assets: RuntimeAssets, clip_files) -> None:
    assert_one_line_error(invoke("--video", clip_files["video"], "--mask", clip_files["empty"], "--engines", runtime_assets.engines), "has no object")


def test_missing_mask_file(runtime_assets: RuntimeAssets, clip_files, tmp_path: Path) -> None:
    assert_one_line_error(invoke("--video", clip_files["video"], "--mask", tmp_path / "no.png", "--engines", runtime_assets.engines), "not found")


def test_engines_folder_without_manifest(clip_files, tmp_path: Path) -> None:
    (tmp_path / "engines").mkdir()
    result = invoke("--video", clip_files["video"], "--mask", clip_files["mask"], "--engines", tmp_path / "engines")
    assert_one_line_error(result, "eamstcn-export --checkpoint best.pth")


def test_default_engines_folder_missing(clip_files, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EAMSTCN_BUNDLED_MODEL", str(tmp_path / "no-bundled-model" / "MODEL.json"))
    result = invoke("--video", clip_files["video"], "--mask", clip_files["mask"])
    assert_one_line_error(result, "eamstcn-export --checkpoint best.pth --fp16")
    assert "bundled model is missing in this install" in result.stderr


def test_manifest_that_does_not_match_its_files(runtime_assets: RuntimeAssets, clip_files, tmp_path: Path) -> None:
    folder = copy_bundle(runtime_assets.engines, tmp_path / "engines")
    with open(folder / "key_encoder.onnx", "ab") as stream:
        stream.write(b"extra")
    result = invoke("--video", clip_files["video"], "--mask", clip_files["mask"], "--engines", folder)
    assert_one_line_error(result, "bytes but manifest.json says")


def test_backend_not_installed(runtime_assets: RuntimeAssets, clip_files, monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def fake_import(name: str, *args: object, **kwargs: object) -> object:
        if name.split(".")[0] == "onnxruntime":
            raise ImportError("No module named 'onnxruntime'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    result = invoke("--video", clip_files["video"], "--mask", clip_files["mask"], "--engines", runtime_assets.engines, "--backend", "onnxruntime")
    assert_one_line_error(result, "onnxruntime is not installed")


def test_bad_option_values(runtime_assets: RuntimeAssets, clip_files) -> None:
    base = ("--video", clip_files["video"], "--mask", clip_files["mask"], "--engines", runtime_assets.engines)
    assert_one_line_error(invoke(*base, "--add-mask", "x:y.png"), "FRAME:PATH")
    assert_one_line_error(invoke(*base, "--memory-frames", 1), "--memory-frames must be at least 2")
    assert_one_line_error(invoke(*base, "--top-k", 0), "--top-k must be at least 1")
    assert_one_line_error(invoke(*base, "--save-every", 0), "--save-every must be at least 1")


def test_add_mask_refused_before_any_output(runtime_assets: RuntimeAssets, clip_files, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = invoke(
        "--video", clip_files["video"], "--mask", clip_files["mask"], "--engines", runtime_assets.engines,
        "--add-mask", f"3:{clip_files['square']}", "--output", out,
    )
    assert_one_line_error(result, "another aspect ratio")
    assert not out.exists()  # checked before the first frame: no empty folder, no header-only stats.csv


def test_error_mid_stream_keeps_outputs(runtime_assets: RuntimeAssets, clip, tmp_path: Path) -> None:
    folder = tmp_path / "frames"
    for t, frame in enumerate(clip.frames[:8]):
        write_frame(folder / f"{t:05d}.png", frame)
    (folder / "00005.png").write_bytes(b"not a png")  # unreadable mid-stream
    out = tmp_path / "out"
    result = invoke("--frames", folder, "--mask", write_mask(tmp_path / "m.png", clip.masks[0]), "--engines", runtime_assets.engines, "--output", out)
    assert_one_line_error(result, "cannot read frame")
    written = len(list((out / "masks").glob("*.png")))
    assert 1 <= written <= 5
    assert len(open(out / "stats.csv").read().splitlines()) == 1 + written
    assert count_video_frames(out / "overlay.mp4") == written


def test_ctrl_c_flushes_outputs_and_exits_130(runtime_assets: RuntimeAssets, clip_files, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from eamstcn.runtime.session import Session

    real_step = Session.step

    def step(self: Session, *args: object, **kwargs: object):
        if self.frame_index == 4:
            raise KeyboardInterrupt
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(Session, "step", step)
    out = tmp_path / "out"
    result = invoke("--video", clip_files["video"], "--mask", clip_files["mask"], "--engines", runtime_assets.engines, "--output", out)
    assert result.exit_code == 130
    assert "Traceback" not in result.output and "interrupted" in result.stdout
    assert len(list((out / "masks").glob("*.png"))) == 4
    assert count_video_frames(out / "overlay.mp4") == 4
    assert len(open(out / "stats.csv").read().splitlines()) == 1 + 4


def test_usage_errors_are_one_line_too(clip_files, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from eamstcn.runtime.cli import main

    for argv in (["--video", str(clip_files["video"])], ["--mask", str(clip_files["mask"]), "--top-k", "many"]):
        monkeypatch.setattr("sys.argv", ["eamstcn-run", *argv])
        with pytest.raises(SystemExit) as info:
            main()
        assert info.value.code == 2
        lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), lines


def test_exactly_one_source(clip_files) -> None:
    assert_one_line_error(invoke("--mask", clip_files["mask"]), "exactly one source")


def test_live_stream_that_drops_mid_stream_ends_cleanly(runtime_assets: RuntimeAssets, clip, clip_files, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class DroppingStream:
        """Delivers six frames (BGR, as OpenCV does), then the connection is gone for good."""

        opened_once = False

        def __init__(self, target: object) -> None:
            self.opened = not DroppingStream.opened_once
            DroppingStream.opened_once = True
            self.frames = [cv2.cvtColor(f, cv2.COLOR_RGB2BGR) for f in clip.frames[:6]] if self.opened else []

        def isOpened(self) -> bool:  # noqa: N802
            return self.opened

        def read(self):
            time.sleep(0.05)  # a camera's frame period: the segmenter keeps up
            return (True, self.frames.pop(0)) if self.frames else (False, None)

        def get(self, prop: int) -> float:
            return 0.0

        def release(self) -> None:
            pass

    monkeypatch.setattr(cv2, "VideoCapture", DroppingStream)
    real_sleep = time.sleep
    monkeypatch.setattr(time, "sleep", lambda seconds: None if seconds >= 0.5 else real_sleep(seconds))  # no reconnect waits
    out = tmp_path / "out"
    result = invoke("--video", "rtsp://camera.local/live", "--mask", clip_files["mask"], "--engines", runtime_assets.engines, "--output", out)
    monkeypatch.undo()  # the real cv2.VideoCapture again, to read the overlay back
    assert result.exit_code == 0, result.output
    assert "reconnecting (3/3)" in result.stderr and "ended" in result.stderr
    assert "Traceback" not in result.output
    frames = len(list((out / "masks").glob("*.png")))
    assert 1 <= frames <= 6 and f"frames: {frames}" in result.stdout
    assert count_video_frames(out / "overlay.mp4") == frames

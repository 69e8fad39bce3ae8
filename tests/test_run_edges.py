"""The rough edges a new user hit with ``eamstcn-run`` (issue 12, part 3), one test each:
mixed frame sizes in overlay.mp4, an edited manifest, a truncated video, FFmpeg's own
log lines, a mask saved as JPEG, flag names in errors, --output that is a file, --top-k
above the memory, grey-level --add-mask adding new ids, no output for a refused run,
progress lines when stderr is not a terminal."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from eamstcn.data.davis_io import read_mask, write_frame
from eamstcn.runtime.cli import app
from eamstcn.runtime.runner import RunOptions, run
from tests.helpers.assets import RuntimeAssets, copy_bundle, count_video_frames, write_mask
from tests.helpers.cli import assert_one_line_error

FRAMES = 8


@pytest.fixture(scope="module")
def clip():
    from eamstcn.data.synth import generate_sequence

    return generate_sequence(seed=11, frames=FRAMES, height=64, width=96, objects=2)


@pytest.fixture(scope="module")
def files(clip, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from eamstcn.data.synth import write_video

    root = tmp_path_factory.mktemp("edges")
    folder = root / "frames"
    for t, frame in enumerate(clip.frames):
        write_frame(folder / f"{t:05d}.png", frame)
    return {
        "frames": folder,
        "video": write_video(root / "clip.mp4", clip.frames, fps=8),
        "object1": write_mask(root / "object1.png", (clip.masks[0] == 1).astype(np.uint8)),
        "both": write_mask(root / "both.png", clip.masks[0]),
    }


def invoke(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_overlay_keeps_frames_of_another_size(runtime_assets: RuntimeAssets, clip, files, tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    for t, frame in enumerate(clip.frames[:6]):
        if t % 2:  # same aspect ratio, twice the size: the old writer dropped these
            frame = cv2.resize(frame, (192, 128), interpolation=cv2.INTER_LINEAR)
        write_frame(folder / f"{t:05d}.png", frame)
    out = tmp_path / "out"
    result = invoke("--frames", folder, "--mask", files["object1"], "--engines", runtime_assets.engines, "--output", out)
    assert result.exit_code == 0, result.output
    assert count_video_frames(out / "overlay.mp4") == 6
    assert "resized to the first one's in overlay.mp4" in result.stderr
    assert read_mask(out / "masks" / "00001.png").shape == (128, 192)  # masks keep each frame's size


@pytest.mark.parametrize(
    ("graph", "kind", "index", "shape", "expected"),
    [
        ("decoder", "outputs", 0, ["K", 1, 64, 32], "[K, 1, 64, 64]"),  # an edited size
        ("decoder", "inputs", 0, [2, 128, 4, 4], "[K, 128, 4, 4]"),  # a dynamic axis made fixed
        ("value_encoder", "inputs", 3, ["K", 128, 4, 4], "[1, 128, 4, 4]"),  # a fixed axis made dynamic
    ],
)
def test_manifest_with_edited_shapes_is_refused(
    runtime_assets: RuntimeAssets, files, tmp_path: Path, graph: str, kind: str, index: int, shape: list, expected: str
) -> None:
    folder = copy_bundle(runtime_assets.engines, tmp_path / "engines")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["graphs"][graph][kind][index]["shape"] = shape
    (folder / "manifest.json").write_text(json.dumps(manifest))
    result = invoke("--video", files["video"], "--mask", files["object1"], "--engines", folder, "--output", tmp_path / "out")
    assert_one_line_error(result, f"{graph}.onnx has {expected}")
    assert not (tmp_path / "out").exists()


def test_manifest_with_an_edited_dtype_is_refused(runtime_assets: RuntimeAssets, files, tmp_path: Path) -> None:
    folder = copy_bundle(runtime_assets.engines, tmp_path / "engines")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["graphs"]["key_encoder"]["files"][0]["dtype"] = "float16"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    result = invoke("--video", files["video"], "--mask", files["object1"], "--engines", folder)
    assert_one_line_error(result, "as float16 but key_encoder.onnx has float32")


def _truncated_avi(clip, path: Path) -> Path:
    """An MJPG AVI cut at 60%: its header still announces every frame."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 8.0, (96, 64))
    if not writer.isOpened():
        pytest.skip("this OpenCV cannot write MJPG AVI")
    for frame in clip.frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 6 // 10])
    return path


def test_truncated_video_says_where_it_ended(runtime_assets: RuntimeAssets, clip, files, tmp_path: Path) -> None:
    video = _truncated_avi(clip, tmp_path / "cut.avi")
    result = invoke("--video", video, "--mask", files["object1"], "--engines", runtime_assets.engines)
    assert result.exit_code == 0, result.output
    notices = [line for line in result.stderr.splitlines() if "ended early at frame" in line]
    assert len(notices) == 1, result.stderr
    read = int(notices[0].split("ended early at frame ")[1].split(":")[0])
    assert 0 < read < FRAMES and f"of the {FRAMES} frames" in notices[0]
    assert f"frames: {read}" in result.stdout


_READ_VIDEOS = """
import sys
{setup}
import cv2
for path in sys.argv[1:]:
    capture = cv2.VideoCapture(path)
    while capture.isOpened() and capture.read()[0]:
        pass
    capture.release()
"""


def test_ffmpeg_and_opencv_log_lines_are_silenced(clip, files, tmp_path: Path) -> None:
    """FFmpeg writes to the process's stderr (fd 2), where neither CliRunner nor capsys
    looks: run a child process on a truncated and a damaged mp4 and read its stderr."""
    data = Path(files["video"]).read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])  # "moov atom not found"
    damaged = bytearray(data)
    damaged[len(data) // 3 : len(data) // 3 + 400] = b"\xff" * 400  # macroblock errors
    (tmp_path / "damaged.mp4").write_bytes(bytes(damaged))
    videos = [str(tmp_path / "cut.mp4"), str(tmp_path / "damaged.mp4"), "99"]

    def stderr_of(setup: str) -> str:
        script = textwrap.dedent(_READ_VIDEOS.format(setup=setup))
        env = {k: v for k, v in __import__("os").environ.items() if not k.startswith(("OPENCV_", "EAMSTCN_DEBUG"))}
        done = subprocess.run([sys.executable, "-c", script, *videos], capture_output=True, text=True, timeout=120, env=env)
        assert done.returncode == 0, done.stderr
        return done.stderr

    if "moov atom not found" not in stderr_of(""):
        pytest.skip("this OpenCV/FFmpeg build prints nothing for a truncated mp4 anyway")
    assert stderr_of("from eamstcn.entry_points import quiet_opencv; quiet_opencv()") == ""
    # Called after cv2 loaded (the order does not matter, only that it comes before a video opens).
    assert stderr_of("import cv2; from eamstcn.entry_points import quiet_opencv; quiet_opencv()") == ""


def test_eamstcn_run_prints_no_ffmpeg_lines_for_a_truncated_mp4(files, tmp_path: Path) -> None:
    data = Path(files["video"]).read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith(("OPENCV_", "EAMSTCN_DEBUG"))}
    done = subprocess.run(
        [sys.executable, "-m", "eamstcn.runtime.cli", "--video", str(tmp_path / "cut.mp4"), "--mask", str(files["object1"]),
         "--checkpoint", str(tmp_path / "unused.pth")],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "did not open" in lines[0], done.stderr


def test_binary_mask_saved_as_jpeg_is_recognised(runtime_assets: RuntimeAssets, clip, files, tmp_path: Path) -> None:
    Image.fromarray(((clip.masks[0] == 1) * 255).astype(np.uint8)).save(tmp_path / "mask.jpg", quality=90)
    out = tmp_path / "out"
    result = invoke("--video", files["video"], "--mask", tmp_path / "mask.jpg", "--engines", runtime_assets.engines, "--output", out)
    assert_one_line_error(result, "is a JPEG/WebP")
    assert "save it as a PNG" in result.stderr and "objects requested" not in result.stderr
    assert not out.exists()


def test_output_that_is_a_file(runtime_assets: RuntimeAssets, files, tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("mine")
    result = invoke("--video", files["video"], "--mask", files["object1"], "--engines", runtime_assets.engines, "--output", target)
    assert_one_line_error(result, "--output")
    assert "is a file" in result.stderr and "FileExistsError" not in result.stderr
    assert target.read_text() == "mine"


def test_top_k_above_the_memory_size(runtime_assets: RuntimeAssets, files, tmp_path: Path) -> None:
    # The bundle's 64x64 padded frames give 4x4 = 16 positions per frame; 3 frames hold 48.
    base = ("--video", files["video"], "--mask", files["object1"], "--engines", runtime_assets.engines, "--memory-frames", 3)
    result = invoke(*base, "--top-k", 49, "--output", tmp_path / "out")
    assert_one_line_error(result, "--top-k 49 is more than the memory holds: --memory-frames 3 x 4x4 positions per frame = 48")
    assert not (tmp_path / "out").exists()
    assert invoke(*base, "--top-k", 48, "--max-frames", 2).exit_code == 0


def test_grey_level_add_mask_adds_a_new_object(runtime_assets: RuntimeAssets, clip, files, tmp_path: Path) -> None:
    """The usual way to draw one more object: a 0/255 PNG. It must become object 2, not
    redraw object 1 (grey levels are ranked 1..n within each file)."""
    Image.fromarray(((clip.masks[3] == 2) * 255).astype(np.uint8)).save(tmp_path / "second.png")
    out = tmp_path / "out"
    result = invoke(
        "--frames", files["frames"], "--mask", files["object1"], "--engines", runtime_assets.engines,
        "--add-mask", f"3:{tmp_path / 'second.png'}", "--output", out,
    )
    assert result.exit_code == 0, result.output
    assert "adds new object id 2" in result.stderr
    assert "objects: 2" in result.stdout
    masks = [read_mask(p) for p in sorted((out / "masks").glob("*.png"))]
    assert np.array_equal(masks[3] == 2, clip.masks[3] == 2)  # drawn where given, as id 2
    assert (masks[3] == 1).any()  # object 1 is still tracked there


def test_palette_add_mask_corrects_a_tracked_id(runtime_assets: RuntimeAssets, clip, files, tmp_path: Path) -> None:
    """A palette id that is already tracked overwrites the prediction where it is drawn
    (README: corrections), without adding an object."""
    drawn = np.zeros((64, 96), bool)
    drawn[8:40, 10:50] = True
    correction = np.where(drawn, 2, 0).astype(np.uint8)  # "object 2 is here"
    out = tmp_path / "out"
    result = invoke(
        "--frames", files["frames"], "--mask", files["both"], "--engines", runtime_assets.engines,
        "--add-mask", f"4:{write_mask(tmp_path / 'fix.png', correction)}", "--output", out, "--max-frames", 6,
    )
    assert result.exit_code == 0, result.output
    assert "palette ids; corrects id 2" in result.stderr and "objects: 2" in result.stdout
    assert (read_mask(out / "masks" / "00004.png")[drawn] == 2).all()


def test_plan_of_object_ids() -> None:
    from eamstcn.data.davis_io import MaskFile
    from eamstcn.runtime.mask_plan import plan_object_ids

    def mask(values: list[int], explicit: bool) -> MaskFile:
        return MaskFile(np.array([values], dtype=np.uint8), explicit)

    tracked, planned = plan_object_ids(
        mask([0, 1, 3], True),
        [(9, Path("c.png"), mask([0, 1, 1], False)), (5, Path("a.png"), mask([0, 1, 2], False)), (7, Path("b.png"), mask([3, 6, 0], True))],
    )
    assert tracked == (1, 3, 4, 5, 6, 7)
    by_frame = {item.frame: item for item in planned}
    assert by_frame[5].new_ids == (4, 5) and by_frame[5].ids.tolist() == [[0, 4, 5]]  # after the largest id, 3
    assert by_frame[7].new_ids == (6,) and by_frame[7].corrected_ids == (3,)
    assert by_frame[9].new_ids == (7,) and by_frame[9].ids.tolist() == [[0, 7, 7]]


def test_too_many_objects_are_refused_before_outputs(runtime_assets: RuntimeAssets, clip, files, tmp_path: Path) -> None:
    ring = np.zeros((64, 96), np.uint8)
    for level, column in enumerate(range(0, 96, 24), start=1):
        ring[:10, column : column + 10] = level * 50  # 4 grey levels -> 4 new objects; with 1 tracked: 5 > 4
    Image.fromarray(ring).save(tmp_path / "four.png")
    out = tmp_path / "out"
    result = invoke(
        "--frames", files["frames"], "--mask", files["object1"], "--engines", runtime_assets.engines,
        "--add-mask", f"2:{tmp_path / 'four.png'}", "--output", out,
    )
    assert_one_line_error(result, "name 5 objects; these engines take at most 4")
    assert not out.exists()


def test_progress_lines_when_stderr_is_not_a_terminal(runtime_assets: RuntimeAssets, files, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    summary = run(
        RunOptions(mask=files["object1"], frames=files["frames"], engines=runtime_assets.engines, progress_every_s=0.0),
        notify=lambda message: None,
    )
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("progress:")]
    assert summary.frames == FRAMES and len(lines) == FRAMES
    assert lines[-1].startswith(f"progress: frame {FRAMES}/{FRAMES}, ") and "FPS" in lines[-1]


def test_stats_rows_match_frames_with_the_writer_thread(runtime_assets: RuntimeAssets, files, tmp_path: Path) -> None:
    out = tmp_path / "out"
    summary = run(
        RunOptions(mask=files["both"], frames=files["frames"], engines=runtime_assets.engines, output=out, writer_queue=1, progress=False),
        notify=lambda message: None,
    )
    rows = list(csv.DictReader(open(out / "stats.csv")))
    assert summary.frames == FRAMES == len(rows) == len(list((out / "masks").glob("*.png")))
    assert [int(r["frame"]) for r in rows] == list(range(FRAMES))

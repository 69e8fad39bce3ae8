"""eamstcn-run on an edge box (issue 20): inputs that crashed OpenCV (a negative camera
index, names that are not UTF-8), option values reported as bugs, output paths checked
before the run, messages that named the wrong cause."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from eamstcn.data.davis_io import write_frame
from eamstcn.runtime.cli import app
from tests.helpers.assets import RuntimeAssets, write_mask
from tests.helpers.cli import assert_one_line_error

FRAMES = 6


@pytest.fixture(scope="module")
def clip():
    from eamstcn.data.synth import generate_sequence

    return generate_sequence(seed=5, frames=FRAMES, height=64, width=96, objects=1)


@pytest.fixture(scope="module")
def files(clip, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from eamstcn.data.synth import write_video

    root = tmp_path_factory.mktemp("hardening")
    folder = root / "frames"
    for t, frame in enumerate(clip.frames):
        write_frame(folder / f"{t:05d}.png", frame)
    return {
        "root": root,
        "frames": folder,
        "video": write_video(root / "clip.mp4", clip.frames, fps=8),
        "mask": write_mask(root / "mask.png", clip.masks[0]),
    }


def invoke(*args: object):
    return CliRunner().invoke(app, [os.fsdecode(a) if isinstance(a, bytes) else str(a) for a in args])


# --------------------------------------------------------------------------- crashes


@pytest.mark.parametrize("index", ["-1", "-2"])
def test_negative_camera_index_is_refused(runtime_assets: RuntimeAssets, files, index: str) -> None:
    result = invoke("--camera", index, "--mask", files["mask"], "--engines", runtime_assets.engines)
    assert_one_line_error(result, "--camera takes a camera index")


def test_video_name_that_is_not_utf8(runtime_assets: RuntimeAssets, files, tmp_path: Path) -> None:
    name = os.fsdecode(b"v\xff.mp4")
    (tmp_path / name).write_bytes(files["video"].read_bytes())
    result = invoke("--video", tmp_path / name, "--mask", files["mask"], "--engines", runtime_assets.engines)
    assert_one_line_error(result, "not valid UTF-8")
    assert "v\\xff.mp4" in result.stderr


def test_output_name_that_is_not_utf8_leaves_nothing(runtime_assets: RuntimeAssets, files, tmp_path: Path) -> None:
    out = tmp_path / os.fsdecode(b"o\xff")
    result = invoke("--video", files["video"], "--mask", files["mask"], "--engines", runtime_assets.engines, "--output", out)
    assert_one_line_error(result, "not valid UTF-8")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- option values


@pytest.mark.parametrize("size", ["banana", "1x1", "100x7", "100000x100000"])
def test_bad_size_is_a_usage_error(files, size: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from eamstcn.runtime.cli import main

    monkeypatch.setattr("sys.argv", ["eamstcn-run", "--frames", str(files["frames"]), "--mask", str(files["mask"]), "--size", size])
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--size" in lines[0], lines
    assert "unexpected" not in lines[0]


def test_output_name_too_long(runtime_assets: RuntimeAssets, files, tmp_path: Path) -> None:
    result = invoke("--video", files["video"], "--mask", files["mask"], "--engines", runtime_assets.engines,
                    "--output", tmp_path / ("o" * 300))
    assert_one_line_error(result, "300 bytes long")
    assert "unexpected" not in result.stderr


# --------------------------------------------------------------------------- stopping


@pytest.fixture
def sigterm_handled(monkeypatch: pytest.MonkeyPatch):
    """termination.install() as main() does it, undone after the test."""
    import signal

    from eamstcn.runtime import termination

    previous = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(termination, "_received", False)
    termination.install()
    yield
    signal.signal(signal.SIGTERM, previous)


def test_sigterm_finishes_the_outputs_and_exits_143(sigterm_handled, runtime_assets: RuntimeAssets, files, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import signal

    from eamstcn.runtime.session import Session
    from tests.helpers.assets import count_video_frames

    real_step = Session.step

    def step(self: Session, *args: object, **kwargs: object):
        if self.frame_index == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # what systemctl stop / docker stop send
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(Session, "step", step)
    out = tmp_path / "out"
    result = invoke("--video", files["video"], "--mask", files["mask"], "--engines", runtime_assets.engines, "--output", out)
    assert result.exit_code == 143, result.output
    assert "terminated (SIGTERM)" in result.stderr and "Traceback" not in result.output
    written = len(list((out / "masks").glob("*.png")))
    assert written >= 3
    assert count_video_frames(out / "overlay.mp4") == written
    assert not (out / ".overlay.partial.mp4").exists()
    assert len((out / "stats.csv").read_text().splitlines()) == 1 + written


def test_an_overlay_the_disk_cut_short_is_removed_not_left_unplayable(tmp_path: Path) -> None:
    from eamstcn.runtime.sinks import OutputWriter

    notices: list[str] = []
    writer = OutputWriter(tmp_path / "out", fps=8, notify=notices.append)
    frame, labels = np.zeros((64, 96, 3), np.uint8), np.zeros((64, 96), np.uint8)
    for index in range(5):
        writer.write(index, frame, labels)
    video = writer._video
    partial = tmp_path / "out" / ".overlay.partial.mp4"

    class DiskFull:
        """The writer reports nothing; the file's end (the mp4 index) never reaches the disk."""

        def release(self) -> None:
            video.release()
            data = partial.read_bytes()
            partial.write_bytes(data[: len(data) // 2])

    writer._video = DiskFull()
    writer.close()
    assert not (tmp_path / "out" / "overlay.mp4").exists() and not partial.exists()
    assert any("overlay.mp4 could not be finished" in notice for notice in notices)
    assert len(list((tmp_path / "out" / "masks").glob("*.png"))) == 5

"""The one clip reader (eamstcn.data.clip_reader): what eamstcn-run's sources, the bench's
footage and INT8 calibration all read frames through, and the messages they share."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from eamstcn.data.clip_reader import Clip, ClipError, ellipse_mask, frame_files, read_clip, video_target
from eamstcn.data.davis_io import write_frame
from eamstcn.data.synth import generate_sequence, write_video


@pytest.fixture(scope="module")
def sequence():
    return generate_sequence(5, frames=6, height=64, width=96, objects=1)


def test_a_frame_folder_and_a_video_give_the_same_clip_shape(sequence, tmp_path: Path) -> None:
    folder = tmp_path / "frames"
    for t, frame in enumerate(sequence.frames):
        write_frame(folder / f"{t:05d}.png", frame)
    (folder / "notes.txt").write_text("not a frame")
    assert [p.name for p in frame_files(folder)] == [f"{t:05d}.png" for t in range(6)]
    frames = read_clip(frames=folder, count=4)
    assert frames.shape == (4, 64, 96, 3) and frames.dtype == np.uint8
    assert np.array_equal(frames, sequence.frames[:4])  # PNG: lossless, RGB order kept
    video = read_clip(video=write_video(tmp_path / "clip.mp4", sequence.frames, fps=10))
    assert video.shape == (6, 64, 96, 3)
    assert np.abs(video.astype(int) - sequence.frames.astype(int)).mean() < 12  # mp4 is lossy, but RGB


def test_one_line_errors(tmp_path: Path) -> None:
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(2000))
    with pytest.raises(ClipError, match="broken.mp4: fewer than 2 readable frames .it did not open: not a video"):
        read_clip(video=broken)
    with pytest.raises(ClipError, match="video not found"):
        read_clip(video=tmp_path / "nope.mp4")
    with pytest.raises(ClipError, match="frame folder not found"):
        read_clip(frames=tmp_path / "nope")
    mixed = tmp_path / "mixed"
    write_frame(mixed / "00000.png", np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(ClipError, match="fewer than 2 readable frames"):
        read_clip(frames=mixed)
    write_frame(mixed / "00001.png", np.zeros((32, 48, 3), np.uint8))
    with pytest.raises(ClipError, match="images must all have the same size"):
        read_clip(frames=mixed)
    with pytest.raises(ClipError, match="not valid UTF-8"):
        video_target(os.fsdecode(b"v\xff.mp4"))
    assert video_target("rtsp://camera.local/stream") == ("rtsp://camera.local/stream", True)


def test_the_ellipse_first_mask() -> None:
    mask = ellipse_mask(60, 90)
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1} and mask[30, 45] == 1 and mask[0, 0] == 0
    assert abs(mask.mean() - np.pi / 4 * (2 / 5) * (2 / 6)) < 0.005  # semi-axes H/5 and W/6: ~10% of the frame
    assert Clip("c", np.zeros((2, 60, 90, 3), np.uint8), mask).num_objects == 1

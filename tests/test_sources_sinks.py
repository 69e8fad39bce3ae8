"""Frame sources (files keep every frame, live sources keep the newest, drops end cleanly)
and output sinks (masks, overlay video, stats kept on errors)."""

from __future__ import annotations

import csv
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from eamstcn.data.davis_io import read_mask, write_frame
from eamstcn.runtime.sinks import STATS_COLUMNS, Display, OutputWriter, overlay
from eamstcn.runtime.sources import FrameUploader, SourceError, open_source
from eamstcn.runtime.timing import StepStats


class FakeCapture:
    """A cv2.VideoCapture stand-in: frames numbered by their pixel value, then failure."""

    def __init__(self, values: list[int], opened: bool = True, delay: float = 0.0) -> None:
        self.values = list(values)
        self.opened = opened
        self.delay = delay
        self.released = False

    def isOpened(self) -> bool:  # noqa: N802 - cv2's name
        return self.opened

    def read(self) -> tuple[bool, np.ndarray | None]:
        if self.delay:
            time.sleep(self.delay)
        if not self.opened or not self.values:
            return False, None
        return True, np.full((8, 8, 3), self.values.pop(0), dtype=np.uint8)

    def get(self, prop: int) -> float:
        return 0.0

    def release(self) -> None:
        self.released = True


def _factory(captures: list[FakeCapture]):
    made: list[FakeCapture] = []

    def make(target: object) -> FakeCapture:
        capture = captures.pop(0) if captures else FakeCapture([], opened=False)
        made.append(capture)
        return capture

    return make, made


def test_live_stream_that_drops_is_retried_then_ends_cleanly() -> None:
    notices: list[str] = []
    make, made = _factory([FakeCapture([1, 2, 3], delay=0.01)])
    with open_source(video="rtsp://camera.local/stream", retries=2, retry_wait=0.01, notify=notices.append, capture_factory=make) as source:
        assert source.info.live
        values = [int(frame[0, 0, 0]) for _, frame in source]
    assert values and values[-1] == 3 and values == sorted(values)
    assert len(made) == 3  # the first capture and two reconnection attempts
    assert sum("reconnecting" in n for n in notices) == 2 and "ended" in notices[-1]
    assert all(capture.released for capture in made)


def test_live_stream_reconnects_and_continues() -> None:
    make, _ = _factory([FakeCapture([1, 2], delay=0.01), FakeCapture([7, 8], delay=0.01)])
    with open_source(camera=0, retries=1, retry_wait=0.0, notify=lambda _: None, capture_factory=make) as source:
        values = [int(frame[0, 0, 0]) for _, frame in source]
    assert values[-1] == 8 and values == sorted(values)  # frames from the second connection


def test_live_source_keeps_only_the_newest_frame() -> None:
    make, _ = _factory([FakeCapture(list(range(1, 201)))])
    seen = []
    with open_source(camera=0, retries=0, notify=lambda _: None, capture_factory=make) as source:
        for _, frame in source:
            seen.append(int(frame[0, 0, 0]))
            time.sleep(0.005)  # a slow segmenter
    assert seen[-1] == 200 and seen == sorted(set(seen))
    assert source.dropped > 0 and len(seen) + source.dropped == 200


def test_camera_that_does_not_open() -> None:
    with pytest.raises(SourceError, match="camera 99 did not open"):
        open_source(camera=99)


def test_missing_video_and_folder(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="video not found"):
        open_source(video=tmp_path / "nope.mp4")
    with pytest.raises(SourceError, match="frame folder not found"):
        open_source(frames=tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no .jpg/.png frames"):
        open_source(frames=tmp_path / "empty")
    with pytest.raises(SourceError, match="exactly one source"):
        open_source(camera=0, frames=tmp_path)


def test_video_file_loses_no_frame_with_a_slow_consumer(tmp_path: Path) -> None:
    from eamstcn.data.synth import write_video

    frames = np.zeros((20, 32, 48, 3), dtype=np.uint8)
    frames[:, :, :, 0] = np.arange(20, dtype=np.uint8)[:, None, None] * 12
    path = write_video(tmp_path / "clip.mp4", frames, fps=10)
    count = 0
    with open_source(video=path) as source:
        assert not source.info.live and source.info.fps == pytest.approx(10, rel=0.01)
        for index, frame in source:
            assert index == count and frame.shape == (32, 48, 3) and frame.dtype == np.uint8
            assert abs(int(frame[16, 24, 0]) - index * 12) <= 6  # RGB order, lossy codec
            count += 1
            time.sleep(0.01)
    assert count == 20


def test_image_folder_is_read_in_name_order(tmp_path: Path) -> None:
    for value in (2, 0, 1):
        write_frame(tmp_path / f"{value:05d}.png", np.full((8, 8, 3), value * 50, dtype=np.uint8))
    (tmp_path / "notes.txt").write_text("ignored")
    with open_source(frames=tmp_path) as source:
        assert [int(frame[0, 0, 0]) for _, frame in source] == [0, 50, 100]


def test_capture_threads_stop_on_close(tmp_path: Path) -> None:
    for value in range(30):
        write_frame(tmp_path / f"{value:05d}.png", np.zeros((8, 8, 3), dtype=np.uint8))
    before = threading.active_count()
    source = open_source(frames=tmp_path)
    next(iter(source))
    source.close()  # the capture thread blocks on a full queue until closed
    assert threading.active_count() <= before


def test_uploader_shares_cpu_memory() -> None:
    frame = np.zeros((4, 4, 3), dtype=np.uint8)
    tensor = FrameUploader(torch.device("cpu"))(frame)
    frame[0, 0, 0] = 9
    assert tensor[0, 0, 0] == 9 and tensor.dtype == torch.uint8


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_uploader_to_cuda() -> None:
    upload = FrameUploader(torch.device("cuda"))
    for value in range(3):
        tensor = upload(np.full((4, 6, 3), value, dtype=np.uint8))
        assert tensor.is_cuda and int(tensor[0, 0, 0]) == value


# --------------------------------------------------------------------------- sinks


def _frame_and_labels(t: int) -> tuple[np.ndarray, np.ndarray]:
    frame = np.full((32, 48, 3), 40 + t, dtype=np.uint8)
    labels = np.zeros((32, 48), dtype=np.uint8)
    labels[4:12, 4 + t : 16 + t] = 1
    labels[20:28, 30:40] = 3
    return frame, labels


def test_writer_outputs_masks_overlay_and_stats(tmp_path: Path) -> None:
    with OutputWriter(tmp_path / "out", fps=12, flush_every=2) as writer:
        for t in range(5):
            frame, labels = _frame_and_labels(t)
            writer.write(t, frame, labels, StepStats(frame=t, stages={"key_encoder": 1.5}, total_ms=3.0, saved=t == 0, memory_frames=1, objects=2))
    out = tmp_path / "out"
    masks = sorted((out / "masks").glob("*.png"))
    assert [p.name for p in masks] == [f"{t:05d}.png" for t in range(5)]
    assert np.array_equal(read_mask(masks[2]), _frame_and_labels(2)[1])
    capture = cv2.VideoCapture(str(out / "overlay.mp4"))
    count = 0
    while capture.read()[0]:
        count += 1
    capture.release()
    assert count == 5 and not (out / ".overlay.partial.mp4").exists()
    rows = list(csv.DictReader(open(out / "stats.csv")))
    assert list(rows[0]) == list(STATS_COLUMNS) and len(rows) == 5
    assert rows[0]["saved"] == "1" and rows[1]["key_encoder_ms"] == "1.500" and rows[1]["decoder_ms"] == ""


def test_writer_keeps_everything_written_before_an_error(tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt):
        with OutputWriter(tmp_path, flush_every=100) as writer:
            for t in range(3):
                writer.write(t, *_frame_and_labels(t))
            raise KeyboardInterrupt
    assert len(list((tmp_path / "masks").glob("*.png"))) == 3
    assert (tmp_path / "overlay.mp4").is_file()
    assert len(open(tmp_path / "stats.csv").read().splitlines()) == 4


def test_overlay_colours_only_objects() -> None:
    frame, labels = _frame_and_labels(0)
    blended = overlay(frame, labels)
    assert np.array_equal(blended[labels == 0], frame[labels == 0])
    assert not np.array_equal(blended[labels == 1], frame[labels == 1])


def test_show_without_a_display_is_one_notice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    notices: list[str] = []
    display = Display(notify=notices.append)
    frame, labels = _frame_and_labels(0)
    assert display.show(frame, labels) and display.show(frame, labels)
    display.close()
    assert len(notices) == 1 and "no display" in notices[0]

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
from eamstcn.runtime.sinks import STATS_COLUMNS, AsyncOutputWriter, Display, OutputError, OutputWriter, overlay
from eamstcn.runtime.sources import FrameUploader, SourceError, open_source
from eamstcn.runtime.timing import StepStats
from tests.helpers.assets import count_video_frames


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


def test_overlay_resizes_frames_of_another_size(tmp_path: Path) -> None:
    notices: list[str] = []
    with OutputWriter(tmp_path, notify=notices.append) as writer:
        for t in range(6):
            frame, labels = _frame_and_labels(t)
            if t % 2:
                frame = cv2.resize(frame, (96, 64))
                labels = cv2.resize(labels, (96, 64), interpolation=cv2.INTER_NEAREST)
            writer.write(t, frame, labels)
    assert count_video_frames(tmp_path / "overlay.mp4") == 6  # OpenCV alone keeps 3
    assert len(notices) == 1 and "48x32" in notices[0]
    assert read_mask(tmp_path / "masks" / "00001.png").shape == (64, 96)


def test_truncated_file_says_at_which_frame_it_ended() -> None:
    class Announces20(FakeCapture):
        def get(self, prop: int) -> float:
            return 20.0 if prop == cv2.CAP_PROP_FRAME_COUNT else 10.0

    notices: list[str] = []
    make, _ = _factory([Announces20(list(range(1, 8)))])
    with open_source(video=__file__, notify=notices.append, capture_factory=make) as source:
        assert source.info.frame_count == 20
        assert len(list(source)) == 7
    assert len(notices) == 1 and "ended early at frame 7: 7 of the 20 frames" in notices[0]


def test_complete_file_has_no_notice() -> None:
    class Announces3(FakeCapture):
        def get(self, prop: int) -> float:
            return 3.0 if prop == cv2.CAP_PROP_FRAME_COUNT else 10.0

    notices: list[str] = []
    make, _ = _factory([Announces3([1, 2, 3])])
    with open_source(video=__file__, notify=notices.append, capture_factory=make) as source:
        assert len(list(source)) == 3
    assert notices == []


# --------------------------------------------------------------------------- writer thread


def test_async_writer_writes_every_frame_in_order(tmp_path: Path) -> None:
    with AsyncOutputWriter(OutputWriter(tmp_path, fps=10), torch.device("cpu"), max_pending=2) as writer:
        for t in range(7):
            frame, labels = _frame_and_labels(t)
            writer.submit(t, frame, torch.from_numpy(labels), StepStats(frame=t, total_ms=1.0))
    rows = list(csv.DictReader(open(tmp_path / "stats.csv")))
    assert [int(r["frame"]) for r in rows] == list(range(7))
    for t in (0, 6):
        assert np.array_equal(read_mask(tmp_path / "masks" / f"{t:05d}.png"), _frame_and_labels(t)[1])
    assert count_video_frames(tmp_path / "overlay.mp4") == 7


def test_async_writer_copies_the_labels_before_returning(tmp_path: Path) -> None:
    """The session may reuse its output buffer for the next frame: what was submitted is
    what gets written, even when the caller overwrites the tensor right after."""
    writer = AsyncOutputWriter(OutputWriter(tmp_path, video=False, stats=False), torch.device("cpu"), max_pending=4)
    gate = threading.Event()
    real_write = writer.writer.write
    writer.writer.write = lambda *args: (gate.wait(5), real_write(*args))  # type: ignore[method-assign]
    buffer = torch.zeros(4, 4, dtype=torch.uint8)
    for t in range(3):
        buffer.fill_(t + 1)
        writer.submit(t, np.zeros((4, 4, 3), np.uint8), buffer)
    buffer.fill_(99)
    gate.set()
    writer.close()
    assert [int(read_mask(tmp_path / "masks" / f"{t:05d}.png").max()) for t in range(3)] == [1, 2, 3]


def test_a_slow_writer_loses_nothing_on_close(tmp_path: Path) -> None:
    """Ctrl-C or the end of the stream: close() drains the queue before closing files."""
    writer = AsyncOutputWriter(OutputWriter(tmp_path, flush_every=1000), torch.device("cpu"), max_pending=3)
    real_write = writer.writer.write
    writer.writer.write = lambda *args: (time.sleep(0.05), real_write(*args))  # type: ignore[method-assign]
    for t in range(6):
        frame, labels = _frame_and_labels(t)
        writer.submit(t, frame, torch.from_numpy(labels))
    writer.close()
    assert len(list((tmp_path / "masks").glob("*.png"))) == 6
    assert len(open(tmp_path / "stats.csv").read().splitlines()) == 1 + 6
    assert count_video_frames(tmp_path / "overlay.mp4") == 6


def test_an_error_in_the_writer_thread_is_one_line(tmp_path: Path) -> None:
    writer = AsyncOutputWriter(OutputWriter(tmp_path, video=False), torch.device("cpu"), max_pending=2)

    def fail(*args: object) -> None:
        raise OSError(28, "No space left on device")

    writer.writer.write = fail  # type: ignore[method-assign]
    frame, labels = _frame_and_labels(0)
    writer.submit(0, frame, torch.from_numpy(labels))
    with pytest.raises(OutputError) as info:
        for t in range(1, 50):  # the failure surfaces at a later submit
            time.sleep(0.01)
            writer.submit(t, frame, torch.from_numpy(labels))
    assert str(info.value) == f"writing outputs to {tmp_path} failed at frame 0: No space left on device"
    writer.close()  # already reported: closing says nothing more


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_async_writer_takes_cuda_labels_through_pinned_buffers(tmp_path: Path) -> None:
    writer = AsyncOutputWriter(OutputWriter(tmp_path, video=False, stats=False), torch.device("cuda"), max_pending=2)
    labels = torch.zeros(32, 48, dtype=torch.uint8, device="cuda")
    labels[4:8] = 2
    frame = np.zeros((32, 48, 3), np.uint8)
    writer.submit(0, frame, labels)  # allocates the pinned buffers
    writer.submit(1, frame, labels)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # a steady frame: no host sync in submit
    try:
        for t in range(2, 6):
            writer.submit(t, frame, labels)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    writer.close()
    for t in range(6):
        assert np.array_equal(read_mask(tmp_path / "masks" / f"{t:05d}.png"), labels.cpu().numpy())

"""Long runs through ``eamstcn-run``'s own loop (issue 20, item 7).

- A camera that drops and comes back within the retry window keeps its objects and its
  memory (fake capture; fast, in CI).
- The soak: a generated clip played forwards and backwards as one long video through
  :func:`eamstcn.runtime.runner.run` with every output on (masks, overlay.mp4, stats.csv),
  adaptive saving, memory 16. Resident memory, frame time and open file handles are
  sampled every 1,000 frames and must stay within 5% of their value at frame 10,000 (or
  at a fifth of a shorter run). ``slow``; the documented command:

      EAMSTCN_SOAK_FRAMES=100000 python -m pytest -m slow tests/test_run_soak.py -s
"""

from __future__ import annotations

import csv
import os
import statistics
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from eamstcn.runtime.config import MemoryConfig, SaveConfig
from eamstcn.runtime.runner import RunOptions, run
from tests.helpers.assets import write_mask

SAMPLE_EVERY = 1000


class LoopingCapture:
    """A ``cv2.VideoCapture`` stand-in: ``clip`` (RGB) played forwards then backwards as BGR
    frames, ``total`` of them, then the end; a file (its frame count announced) unless ``live``."""

    def __init__(self, clip: np.ndarray, total: int, live: bool = False, drop_after: int | None = None, opens: bool = True) -> None:
        self.frames = [cv2.cvtColor(frame, cv2.COLOR_RGB2BGR) for frame in clip]
        self.total, self.live, self.drop_after, self.opens = total, live, drop_after, opens
        self.delivered = 0

    def isOpened(self) -> bool:  # noqa: N802
        return self.opens

    def read(self):
        if self.delivered >= self.total or (self.drop_after is not None and self.delivered >= self.drop_after):
            return False, None
        period = 2 * len(self.frames) - 2
        step = self.delivered % period
        index = step if step < len(self.frames) else period - step
        self.delivered += 1
        if self.live:
            time.sleep(0.03)  # a camera's frame period: the loop keeps up, no frame is dropped
        return True, self.frames[index]

    def get(self, prop: int) -> float:
        if prop == cv2.CAP_PROP_FRAME_COUNT and not self.live:
            return float(self.total)
        return 25.0 if prop == cv2.CAP_PROP_FPS else 0.0

    def release(self) -> None:
        pass


@pytest.fixture(scope="module")
def clip():
    from eamstcn.data.synth import generate_sequence

    return generate_sequence(seed=9, frames=40, height=64, width=64, objects=2)


def _stats(out: Path) -> list[dict[str, str]]:
    with (out / "stats.csv").open() as stream:
        return list(csv.DictReader(stream))


def test_camera_that_drops_and_returns_keeps_objects_and_memory(runtime_assets, clip, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import eamstcn.runtime.sources as sources
    from eamstcn.runtime.session import Session

    opened: list[LoopingCapture] = []

    def factory(target: object) -> LoopingCapture:
        # The first connection drops after 12 frames, the reconnection delivers 12 more, and
        # then the camera is gone for good (the run ends after the retries).
        capture = LoopingCapture(clip.frames[:12], total=12, live=True, opens=len(opened) < 2)
        opened.append(capture)
        return capture

    def no_reset(self: Session) -> None:
        raise AssertionError("the session was reset: objects and memory lost")

    monkeypatch.setattr(sources.cv2, "VideoCapture", factory)
    monkeypatch.setattr(Session, "reset", no_reset)
    real_sleep = time.sleep
    monkeypatch.setattr(time, "sleep", lambda seconds: None if seconds >= 0.5 else real_sleep(seconds))
    notices: list[str] = []
    out = tmp_path / "out"
    summary = run(RunOptions(mask=write_mask(tmp_path / "m.png", clip.masks[0]), camera=0, engines=runtime_assets.engines,
                             device="cpu", output=out, progress=False, save=SaveConfig(mode="fixed", save_every=3)),
                  notify=notices.append)
    assert len(opened) >= 3 and any("reconnecting (1/3)" in n for n in notices)
    assert summary.frames == 24 - summary.dropped and summary.objects == 2
    rows = _stats(out)
    memory = [int(row["memory_frames"]) for row in rows]
    assert memory == sorted(memory) and memory[-1] > memory[len(memory) // 2 - 1]  # kept growing across the drop
    last = cv2.imread(str(sorted((out / "masks").glob("*.png"))[-1]), cv2.IMREAD_UNCHANGED)
    assert last is not None and last.any()  # still tracking after the reconnection


def _rss_mb(process) -> float:
    return process.memory_info().rss / 2**20


@pytest.mark.slow
def test_soak_through_eamstcn_run_stays_flat(runtime_assets, clip, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    psutil = pytest.importorskip("psutil")
    import eamstcn.runtime.sources as sources
    from eamstcn.runtime.session import Session

    total = int(os.environ.get("EAMSTCN_SOAK_FRAMES", "100000"))
    baseline_at = min(10_000, max(SAMPLE_EVERY, total // 5 // SAMPLE_EVERY * SAMPLE_EVERY))
    video = tmp_path / "soak.mp4"
    video.write_bytes(b"")  # the path must exist; frames come from LoopingCapture
    monkeypatch.setattr(sources.cv2, "VideoCapture", lambda target: LoopingCapture(clip.frames, total))

    process = psutil.Process()
    samples: list[tuple[int, float, float, int]] = []  # frame, RSS MB, median ms per frame, open files
    times: list[float] = []
    real_step = Session.step

    def step(self: Session, *args, **kwargs):
        started = time.perf_counter()
        result = real_step(self, *args, **kwargs)
        times.append(time.perf_counter() - started)
        if len(times) % SAMPLE_EVERY == 0:
            window = times[-SAMPLE_EVERY:]
            samples.append((len(times), _rss_mb(process), 1000 * statistics.median(window), process.num_fds()))
        return result

    monkeypatch.setattr(Session, "step", step)
    out = tmp_path / "out"
    started = time.perf_counter()
    summary = run(RunOptions(mask=write_mask(tmp_path / "m.png", clip.masks[0]), video=str(video), engines=runtime_assets.engines,
                             device="cpu", output=out, progress=False, memory=MemoryConfig(capacity=16), save=SaveConfig(mode="adaptive")),
                  notify=lambda message: None)
    seconds = time.perf_counter() - started
    assert summary.frames == total
    base = next(sample for sample in samples if sample[0] == baseline_at)
    print(f"\nsoak: {total} frames in {seconds:.0f} s ({summary.fps:.1f} FPS), stored {summary.stored_frames}; "
          f"baseline frame {baseline_at}: RSS {base[1]:.1f} MB, {base[2]:.2f} ms/frame, {base[3]} open files")
    for frame, rss, ms, fds in samples:
        if frame % max(SAMPLE_EVERY, total // 10) == 0 or frame == samples[-1][0]:
            print(f"  frame {frame:>6}: RSS {rss:.1f} MB ({100 * (rss / base[1] - 1):+.2f}%), "
                  f"{ms:.2f} ms/frame ({100 * (ms / base[2] - 1):+.1f}%), {fds} open files")
    later = [sample for sample in samples if sample[0] >= baseline_at]
    assert max(rss for _, rss, _, _ in later) <= 1.05 * base[1]
    assert max(fds for _, _, _, fds in later) <= base[3]
    assert max(ms for _, _, ms, _ in later) <= 1.05 * base[2], "frame time grew (or the machine got busier)"
    assert len(list((out / "masks").glob("*.png"))) == total

"""Hours-long streams in miniature: 5,000 frames through one session must not grow.

Slow (minutes on 2 cores): deselected in CI; run with ``python -m pytest -m slow -s``.
It prints the figures reported in the README.
"""

from __future__ import annotations

import gc

import pytest
import torch

from eamstcn.runtime.config import MemoryConfig, SaveConfig
from eamstcn.runtime.engines.factory import open_engines
from eamstcn.runtime.session import Session
from tests.helpers.assets import FRAME_SIZE

psutil = pytest.importorskip("psutil")

FRAMES = 5000
BASELINE_FRAME = 500
CAPACITY = 8


def _rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_five_thousand_frames_stay_flat(runtime_assets, backend: str) -> None:
    from eamstcn.data.synth import generate_sequence

    clip = generate_sequence(11, frames=100, height=FRAME_SIZE[0], width=FRAME_SIZE[1], objects=2)
    frames = [torch.from_numpy(frame) for frame in clip.frames]
    engines = open_engines(runtime_assets.engines, runtime_assets.checkpoint, backend=backend, device="cpu")
    # Fixed saving every 5 frames fills a capacity of 8 by frame 40; from then on every
    # save evicts, which is the path that leaks if anything does.
    session = Session(engines, MemoryConfig(capacity=CAPACITY), SaveConfig(mode="fixed", save_every=5))
    session.step(frames[0], torch.from_numpy(clip.masks[0]))
    rss_at_baseline = None
    fill: list[int] = []
    for t in range(1, FRAMES):
        # Play the clip forwards then backwards so motion never jumps.
        index = t % 198
        index = index if index < 100 else 198 - index
        session.step(frames[index])
        fill.append(session.memory_frames)
        if t == BASELINE_FRAME:
            gc.collect()
            rss_at_baseline = _rss_mb()
    gc.collect()
    rss_end = _rss_mb()
    assert rss_at_baseline is not None
    growth = (rss_end - rss_at_baseline) / rss_at_baseline
    print(f"\n{backend}: RSS {rss_at_baseline:.1f} MB at frame {BASELINE_FRAME}, {rss_end:.1f} MB at frame {FRAMES} "
          f"({100 * growth:+.2f}%); memory frames {min(fill[BASELINE_FRAME:])}..{max(fill)}; stored {session.stored_frames}")
    assert max(fill) == CAPACITY
    assert all(value == CAPACITY for value in fill[BASELINE_FRAME:])
    assert growth < 0.05
    engines.close()


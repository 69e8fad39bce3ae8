"""Session: schedule, objects (dense remap, added mid-stream), sizes, timings, reset."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eamstcn.runtime.config import MemoryConfig, SaveConfig
from eamstcn.runtime.engines.factory import open_engines
from eamstcn.runtime.session import STAGES, Session, SessionError
from tests.helpers.assets import RuntimeAssets


@pytest.fixture(scope="module")
def engines(runtime_assets: RuntimeAssets):
    with open_engines(runtime_assets.engines, backend="onnxruntime") as opened:
        yield opened


@pytest.fixture(scope="module")
def clip():
    from eamstcn.data.synth import generate_sequence

    return generate_sequence(seed=5, frames=12, height=64, width=96, objects=2)


def _frames(clip) -> list[torch.Tensor]:
    return [torch.from_numpy(frame) for frame in clip.frames]


def test_first_frame_needs_a_mask_with_an_object(engines) -> None:
    session = Session(engines)
    frame = torch.zeros(64, 96, 3, dtype=torch.uint8)
    with pytest.raises(SessionError, match="first frame needs a mask"):
        session.step(frame)
    with pytest.raises(SessionError, match="no object"):
        session.step(frame, torch.zeros(64, 96, dtype=torch.uint8))
    with pytest.raises(SessionError, match="uint8"):
        session.step(frame.float(), torch.ones(64, 96, dtype=torch.uint8))


def test_sparse_ids_are_remapped_and_mapped_back(engines, clip) -> None:
    session = Session(engines, save=SaveConfig(mode="fixed"))
    sparse = np.where(clip.masks[0] == 1, 3, np.where(clip.masks[0] == 2, 7, 0)).astype(np.uint8)
    frames = _frames(clip)
    probs = session.step(frames[0], torch.from_numpy(sparse))
    assert session.object_ids == (3, 7) and session.num_objects == 2
    assert probs.shape == (3, 64, 96) and probs.dtype == torch.float32
    assert np.array_equal(session.labels(probs).numpy(), sparse)  # frame 0 returns the mask itself
    probs = session.step(frames[1])
    assert probs.shape == (3, 64, 96)
    torch.testing.assert_close(probs.sum(0), torch.ones(64, 96))
    assert set(np.unique(session.labels(probs).numpy())) <= {0, 3, 7}


def test_output_is_at_the_frames_own_size(engines, clip) -> None:
    session = Session(engines)
    big = torch.from_numpy(np.repeat(np.repeat(clip.frames[:3], 2, axis=1), 2, axis=2))  # 128 x 192
    mask = torch.from_numpy(np.repeat(np.repeat(clip.masks[0], 2, axis=0), 2, axis=1))
    assert session.step(big[0], mask).shape == (3, 128, 192)
    probs = session.step(big[1])
    assert probs.shape == (3, 128, 192)
    torch.testing.assert_close(probs.sum(0), torch.ones(128, 192))


def test_schedule_stores_per_rule_and_never_the_last_frame(engines, clip) -> None:
    session = Session(engines, MemoryConfig(capacity=4), SaveConfig(mode="fixed", save_every=1), timing=True)
    frames = _frames(clip)[:6]
    for t, frame in enumerate(frames):
        session.step(frame, torch.from_numpy(clip.masks[0]) if t == 0 else None, is_last=t == len(frames) - 1)
        stats = session.last_stats
        assert stats is not None and stats.frame == t
        assert stats.saved == (t < len(frames) - 1)
    assert session.stored_frames == 5  # frames 0..4; frame 5 was the last
    assert session.memory_frames == 4  # capacity reached, eviction kept it bounded


def test_timings_name_the_stages_and_are_off_by_default(engines, clip) -> None:
    frames = _frames(clip)
    session = Session(engines, save=SaveConfig(mode="fixed", save_every=2), timing=True)
    session.step(frames[0], torch.from_numpy(clip.masks[0]))
    session.step(frames[1])
    stats = session.last_stats
    assert stats is not None and not stats.saved
    assert set(stats.stages) == {"preprocess", "key_encoder", "memory_read", "decoder", "aggregate", "save_decision", "postprocess"}
    assert set(stats.stages) <= set(STAGES) and stats.total_ms >= max(stats.stages.values())
    session.step(frames[2])
    assert session.last_stats.saved and "value_encoder" not in session.last_stats.stages
    # Frame 2 is stored at the start of frame 3, before its read: the value encoder's
    # time is in frame 3's stats.
    session.step(frames[3])
    assert not session.last_stats.saved and {"memory_write", "value_encoder"} <= set(session.last_stats.stages)
    quiet = Session(engines)
    quiet.step(frames[0], torch.from_numpy(clip.masks[0]))
    assert quiet.last_stats is None


def test_objects_added_mid_stream(engines, clip) -> None:
    frames = _frames(clip)
    only_first = torch.from_numpy((clip.masks[0] == 1).astype(np.uint8))
    second = torch.from_numpy(np.where(clip.masks[4] == 2, 2, 0).astype(np.uint8))

    reference = Session(engines, save=SaveConfig(mode="fixed", save_every=100))
    session = Session(engines, save=SaveConfig(mode="fixed", save_every=100))
    for t in range(4):
        mask = only_first if t == 0 else None
        expected = reference.step(frames[t], mask)
        torch.testing.assert_close(session.step(frames[t], mask), expected)
    assert session.num_objects == 1 and session.stored_frames == 1

    before = reference.step(frames[4])  # (2, H, W): background + object 1
    after = session.step(frames[4], second)  # (3, H, W): object 2 added
    assert session.object_ids == (1, 2) and after.shape == (3, 64, 96)
    drawn = second.bool()
    labels = session.labels(after)
    assert bool((labels[drawn] == 2).all())
    # Where the new mask is 0, object 1 and the background keep their predictions.
    torch.testing.assert_close(after[:2][:, ~drawn], before[:, ~drawn])
    assert bool((after[2][~drawn] == 0).all())
    assert session.stored_frames == 2  # an annotated frame always enters memory

    for frame in frames[5:8]:
        probs = session.step(frame)
        assert probs.shape == (3, 64, 96)
        torch.testing.assert_close(probs.sum(0), torch.ones(64, 96))


def test_too_many_objects_is_a_clear_error(engines, clip) -> None:
    session = Session(engines)
    ids = np.arange(64 * 96, dtype=np.int64).reshape(64, 96) % 6 + 1  # 6 objects > max_objects 4
    with pytest.raises(SessionError, match="at most 4"):
        session.step(_frames(clip)[0], torch.from_numpy(ids.astype(np.uint8)))


def test_reset_starts_a_new_stream(engines, clip) -> None:
    frames = _frames(clip)[:4]
    session = Session(engines, save=SaveConfig(mode="fixed", save_every=2))

    def run() -> list[torch.Tensor]:
        return [session.step(f, torch.from_numpy(clip.masks[0]) if t == 0 else None).clone() for t, f in enumerate(frames)]

    first = run()
    session.reset()
    assert session.frame_index == 0 and session.num_objects == 0 and session.memory_frames == 0
    assert session.stored_frames == 0
    with pytest.raises(SessionError, match="first frame needs a mask"):
        session.step(frames[0])
    second = run()
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b)


def test_torch_backend_from_a_checkpoint_keeps_the_frame_size(runtime_assets: RuntimeAssets, clip) -> None:
    with open_engines(checkpoint=runtime_assets.checkpoint) as engines:
        session = Session(engines, memory=MemoryConfig(capacity=3))
        frames = _frames(clip)
        session.step(frames[0], torch.from_numpy(clip.masks[0]))
        probs = session.step(frames[1], is_last=True)
        assert probs.shape == (3, 64, 96) and session.stored_frames == 1

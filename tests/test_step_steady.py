"""A steady frame neither reads the device nor allocates; its buffers keep their addresses.

CPU: dispatch-level guards (tests/sync_guard.py) around ``Session.step`` and
``Session.labels`` over frames that store, evict and skip. CUDA (skipped here):
``torch.cuda.set_sync_debug_mode("error")`` and the caching allocator's counters over
100 frames, with and without CUDA graphs.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eamstcn.runtime.config import MemoryConfig, SaveConfig
from eamstcn.runtime.engines.binding import CopyBinding
from eamstcn.runtime.engines.factory import open_engines
from eamstcn.runtime.session import Session
from tests.helpers.assets import FRAME_SIZE, RuntimeAssets
from tests.gt_engines import GroundTruthEngines
from tests.sync_guard import AllocationCounter, NestedHostReads, forbid_host_reads

WARMUP = 3  # frame 0, the first steady frame (allocates its output view), the first store


@pytest.fixture(scope="module")
def engines(runtime_assets: RuntimeAssets):
    with open_engines(runtime_assets.engines, backend="onnxruntime") as opened:
        yield opened


def _clip(height: int, width: int, frames: int = 24, objects: int = 2):
    from eamstcn.data.synth import generate_sequence

    clip = generate_sequence(seed=7, frames=frames, height=height, width=width, objects=objects)
    return [torch.from_numpy(frame) for frame in clip.frames], torch.from_numpy(clip.masks[0])


def _guarded_run(session: Session, frames: list[torch.Tensor], mask: torch.Tensor, counter: AllocationCounter) -> list[int]:
    """Frames WARMUP.. under both guards; returns the data pointers of each output."""
    pointers = []
    for t, frame in enumerate(frames):
        if t < WARMUP:
            session.step(frame, mask if t == 0 else None)
            continue
        with NestedHostReads() as nested, forbid_host_reads(), counter:
            probs = session.step(frame, is_last=t == len(frames) - 1)
            session.labels(probs)
        # Host reads inside aten kernels (masked_fill_ with a tensor value...) too.
        assert nested.names == [], f"frame {t}: {nested.names}"
        pointers.append(probs.data_ptr())
    return pointers


# Saves often (every 2nd frame at most, no cooldown) into a small bank: stores, evictions
# and skipped stores all happen inside the guarded frames.
OFTEN = SaveConfig(mode="adaptive", save_every=2, cooldown=0)


@pytest.mark.parametrize(
    ("size", "memory"),
    [
        (FRAME_SIZE, MemoryConfig(capacity=3)),
        ((96, 80), MemoryConfig(capacity=3, eviction="oldest")),  # resized in and out
    ],
)
def test_onnxruntime_steady_frames_do_not_sync_or_allocate(engines, size, memory) -> None:
    frames, mask = _clip(*size)
    session = Session(engines, memory, OFTEN)
    counter = AllocationCounter()
    pointers = _guarded_run(session, frames, mask, counter)
    assert counter.total == 0, f"tensors created in steady frames: {dict(counter.counts)}"
    assert counter.seen > 50 * (len(frames) - WARMUP)  # the glue ran under the counter
    assert len(set(pointers)) == 1  # the output is one fixed buffer
    assert session.stored_frames > memory.capacity  # evictions happened in the guarded frames


def test_torch_engines_steady_frames_do_not_sync_and_the_glue_does_not_allocate(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ground-truth torch engines; their insides (not the glue) are excluded from the count."""
    frames, mask = _clip(64, 96, objects=1)
    truth = torch.stack([frames_mask for frames_mask in _truth_masks(64, 96, len(frames))])
    fake = GroundTruthEngines(truth, (64, 96), max_objects=2)
    counter = AllocationCounter()
    run = CopyBinding.run

    def paused_run(self: CopyBinding) -> None:
        with counter.paused():
            run(self)

    monkeypatch.setattr(CopyBinding, "run", paused_run)
    session = Session(fake.engine_set(), MemoryConfig(capacity=3), OFTEN)
    _guarded_run(session, frames, (truth[0] > 0).to(torch.uint8), counter)
    assert counter.total == 0, f"tensors created in steady frames: {dict(counter.counts)}"


def _truth_masks(height: int, width: int, count: int) -> list[torch.Tensor]:
    """A disc that moves right one pixel per frame: (H, W) bool per frame."""
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    return [((rows - height // 2) ** 2 + (cols - 20 - t) ** 2) < 150 for t in range(count)]


def test_bank_and_step_buffers_keep_their_addresses(engines) -> None:
    frames, mask = _clip(*FRAME_SIZE)
    session = Session(engines, MemoryConfig(capacity=3), OFTEN)
    session.step(frames[0], mask)
    core = session._core  # noqa: SLF001 - the addresses are the point of this test
    tensors = [core.pre.image, core.query, core.f16x, core.f8, core.f4, *core.bank._tensors()]  # noqa: SLF001
    parts = core.parts(session.num_objects)
    tensors += [parts.readout, parts.logits, parts.masks, parts.others, parts.value_out, parts.aggregator.probs]
    before = [t.data_ptr() for t in tensors]
    for frame in frames[1:]:
        session.step(frame)
    assert [t.data_ptr() for t in tensors] == before


def test_unknown_decisions_run_the_store_masked_and_store_the_same_frames(engines, monkeypatch: pytest.MonkeyPatch) -> None:
    """When the host cannot see the decision yet (CUDA running behind), the store runs
    masked by the device flag: same frames stored, only more value-encoder runs."""
    from eamstcn.runtime.decision import DecisionMirror

    frames, mask = _clip(*FRAME_SIZE)

    def run(blind: bool) -> tuple[list[torch.Tensor], int, int]:
        if blind:
            monkeypatch.setattr(DecisionMirror, "peek", lambda self: None)
        session = Session(engines, MemoryConfig(capacity=4), SaveConfig(save_every=3))
        outputs = [session.step(f, mask if t == 0 else None, is_last=t == len(frames) - 1).clone() for t, f in enumerate(frames)]
        return outputs, session.stored_frames, session.speculative_stores

    seen, stored, speculative = run(blind=False)
    blind, blind_stored, blind_speculative = run(blind=True)
    assert speculative == 0 and blind_speculative == len(frames) - 2
    assert blind_stored == stored
    for a, b in zip(seen, blind):
        torch.testing.assert_close(a, b)


# --------------------------------------------------------------------------- CUDA

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _cuda_session(runtime_assets: RuntimeAssets, backend: str, graphs: bool) -> tuple[Session, list[torch.Tensor], torch.Tensor]:
    if backend == "onnxruntime":
        from eamstcn.runtime.engines.onnxruntime_engine import cuda_provider_available

        if not cuda_provider_available():
            pytest.skip("onnxruntime here has no CUDA provider")
    engines = open_engines(runtime_assets.engines, runtime_assets.checkpoint, backend=backend, device="cuda", precision="fp32")
    frames, mask = _clip(*FRAME_SIZE, frames=12)
    frames = [frame.cuda() for frame in frames]
    session = Session(engines, MemoryConfig(capacity=4), OFTEN, cuda_graphs=graphs)
    return session, frames, mask


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize(("backend", "graphs"), [("torch", True), ("torch", False), ("onnxruntime", True), ("onnxruntime", False)])
def test_cuda_steady_frames_do_not_sync(runtime_assets: RuntimeAssets, backend: str, graphs: bool) -> None:
    session, frames, mask = _cuda_session(runtime_assets, backend, graphs)
    for t in range(WARMUP + 2):  # warm-up: eager runs, then captures (which synchronise)
        session.step(frames[t % len(frames)], mask if t == 0 else None)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for t in range(100):
            probs = session.step(frames[t % len(frames)])
            session.labels(probs)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    assert bool(torch.isfinite(probs).all())


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_cuda_steady_frames_do_not_allocate(runtime_assets: RuntimeAssets, backend: str) -> None:
    session, frames, mask = _cuda_session(runtime_assets, backend, graphs=True)
    for t in range(WARMUP + 12):  # until both phases are captured
        session.step(frames[t % len(frames)], mask if t == 0 else None)
    torch.cuda.synchronize()
    before = torch.cuda.memory_stats()["allocation.all.allocated"]
    for t in range(100):
        probs = session.step(frames[t % len(frames)])
        session.labels(probs)
    torch.cuda.synchronize()
    assert torch.cuda.memory_stats()["allocation.all.allocated"] == before


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_cuda_graphs_match_eager(runtime_assets: RuntimeAssets, backend: str) -> None:
    outputs = {}
    for graphs in (False, True):
        session, frames, mask = _cuda_session(runtime_assets, backend, graphs)
        outputs[graphs] = [session.step(f, mask if t == 0 else None).clone() for t, f in enumerate(frames * 3)]
        stored = session.stored_frames
        outputs[graphs, "stored"] = stored
    assert outputs[True, "stored"] == outputs[False, "stored"]
    for eager, graphed in zip(outputs[False], outputs[True]):
        torch.testing.assert_close(graphed, eager, atol=1e-4, rtol=1e-4)
    assert np.isfinite(outputs[True][-1].cpu().numpy()).all()


@pytest.mark.gpu
@cuda
def test_cuda_torch_step_is_one_graph_with_the_store_on_the_device(runtime_assets: RuntimeAssets) -> None:
    """The torch backend: store (conditional node) + frame in one graph; the host never
    needs the decision, so no store runs speculatively, and the frames stored are those
    of an eager run on the same device."""
    from eamstcn.runtime.cuda_graphs import ONE_GRAPH, conditional_nodes_available

    if not conditional_nodes_available():
        pytest.skip("this torch has no CUDA graph conditional nodes")
    stored = {}
    for graphs in (True, False):
        session, frames, mask = _cuda_session(runtime_assets, "torch", graphs=graphs)
        for t, frame in enumerate(frames * 3):
            session.step(frame, mask if t == 0 else None)
        stored[graphs] = session.stored_frames
        if graphs:
            step = session._core.parts(session.num_objects).graphed[FRAME_SIZE]  # noqa: SLF001
            assert step.graph is not None and session.step_mode == ONE_GRAPH, session.notes
            assert session.speculative_stores == 0
    assert stored[True] == stored[False]

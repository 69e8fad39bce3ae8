"""A captured steady phase keeps reading valid memory across Session.reset and K changes.

A CUDA graph replays the addresses it saw at capture. Graphs are kept per object count K
for the life of a session (an eval resets it between sequences), so every buffer the
steady phases touch must keep its address across ``reset()``, new streams with another
K, and objects added mid-stream. On the CPU the steady phases run eagerly; a dispatch
mode records the storage of every tensor they touch, and holds it, so a buffer that was
reallocated cannot come back at its old address by chance.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from eamstcn.runtime.config import MemoryConfig, SaveConfig
from eamstcn.runtime.engines.factory import open_engines
from eamstcn.runtime.session import Session
from eamstcn.runtime.step_core import Phase
from tests.helpers.assets import FRAME_SIZE, RuntimeAssets


class StorageRecorder(TorchDispatchMode):
    """Storage addresses of every tensor an op takes or returns (storages held alive)."""

    def __init__(self) -> None:
        super().__init__()
        self.addresses: set[int] = set()
        self._held: list[torch.UntypedStorage] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        result = func(*args, **(kwargs or {}))
        for value in tree_flatten((args, kwargs, result))[0]:
            if isinstance(value, torch.Tensor) and value.numel():
                storage = value.untyped_storage()
                self.addresses.add(storage.data_ptr())
                self._held.append(storage)
        return result


@pytest.fixture(scope="module")
def engines(runtime_assets: RuntimeAssets):
    with open_engines(runtime_assets.engines, backend="onnxruntime") as opened:
        yield opened


@contextmanager
def recording(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, StorageRecorder | None]]:
    """Record the steady phases (store and frame) into ``slot["recorder"]`` when set."""
    slot: dict[str, StorageRecorder | None] = {"recorder": None}
    run_eager = Phase.run_eager

    def recorded(self: Phase, timer) -> None:  # noqa: ANN001
        recorder = slot["recorder"]
        if recorder is None:
            run_eager(self, timer)
            return
        with recorder:
            run_eager(self, timer)

    monkeypatch.setattr(Phase, "run_eager", recorded)
    yield slot


def _clip():
    from eamstcn.data.synth import generate_sequence

    clip = generate_sequence(seed=11, frames=12, height=FRAME_SIZE[0], width=FRAME_SIZE[1], objects=2)
    return [torch.from_numpy(frame) for frame in clip.frames], torch.from_numpy(clip.masks[0])


def test_steady_phases_touch_the_same_addresses_across_reset_and_object_counts(engines, monkeypatch) -> None:
    frames, mask = _clip()
    two = mask
    one = torch.where(mask == 2, 0, mask).to(torch.uint8)
    # Adaptive saving: the trigger table and the previous masks (per K) are in the step.
    session = Session(engines, MemoryConfig(capacity=3), SaveConfig(mode="adaptive", save_every=2, cooldown=0))
    with recording(monkeypatch) as slot:

        def stream(first: torch.Tensor, added_at: int | None = None) -> StorageRecorder:
            recorder = StorageRecorder()
            for t, frame in enumerate(frames):
                annotation = first if t == 0 else (two if t == added_at else None)
                # Record the steady frames with two objects only.
                slot["recorder"] = recorder if session.num_objects == 2 and annotation is None and t > 1 else None
                session.step(frame, annotation)
            slot["recorder"] = None
            return recorder

        reference = stream(two)
        session.reset()
        stream(one)  # K = 1: its own parts; must not move K = 2's or the shared buffers
        session.reset()
        again = stream(two)
        session.reset()
        added = stream(one, added_at=4)  # K goes 1 -> 2 mid-stream
    # The user's frames themselves are read in place on the CPU (graphs read a staging
    # buffer instead): leave them out.
    frames_read = {frame.untyped_storage().data_ptr() for frame in frames}
    expected = reference.addresses - frames_read
    assert len(expected) > 20
    assert again.addresses - frames_read == expected
    assert added.addresses - frames_read == expected


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graphs_equal_eager_across_reset_and_object_counts(runtime_assets: RuntimeAssets) -> None:
    """Graphs captured in the first stream, replayed after resets and K changes."""
    frames, mask = _clip()
    frames = [frame.cuda() for frame in frames]
    one = torch.where(mask == 2, 0, mask).to(torch.uint8)
    results = {}
    for graphs in (False, True):
        with open_engines(runtime_assets.engines, runtime_assets.checkpoint, backend="torch", device="cuda") as engines:
            session = Session(engines, MemoryConfig(capacity=3), SaveConfig(mode="adaptive", save_every=2, cooldown=0), cuda_graphs=graphs)
            outputs = []
            for first, added_at in ((mask, None), (one, None), (mask, None), (one, 4)):
                session.reset()
                for t, frame in enumerate(frames):
                    annotation = first if t == 0 else (mask if t == added_at else None)
                    outputs.append(session.step(frame, annotation).clone())
                outputs.append(torch.tensor(session.stored_frames))
            results[graphs] = outputs
    for eager, graphed in zip(results[False], results[True]):
        torch.testing.assert_close(graphed.float(), eager.float(), atol=1e-4, rtol=1e-4)

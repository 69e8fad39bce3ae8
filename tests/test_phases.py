"""How steady phases are grouped for CUDA graphs, and which step gets the one-graph form.

The captures themselves need CUDA (tests/test_step_steady.py, marked gpu); what decides
them is plain Python and is checked here.
"""

from __future__ import annotations

import pytest
import torch

from eamstcn.runtime.config import MemoryConfig, SaveConfig
from eamstcn.runtime.cuda_graphs import FusedStep, conditional_nodes_available
from eamstcn.runtime.engines.factory import open_engines
from eamstcn.runtime.phases import Phase, Piece
from eamstcn.runtime.session import Session, SessionError
from eamstcn.runtime.timing import StageTimer
from tests.conftest_runtime import FRAME_SIZE, RuntimeAssets, runtime_assets  # noqa: F401


def test_segments_group_runs_of_capturable_pieces() -> None:
    calls: list[str] = []
    piece = lambda name, capturable=True: Piece(name, lambda: calls.append(name), capturable)  # noqa: E731
    phase = Phase("frame", (piece("a"), piece("b"), piece("engine", False), piece("c"), piece("engine2", False), piece("engine3", False)))
    assert [(name, [p.name for p in pieces], capturable) for name, pieces, capturable in phase.segments()] == [
        ("frame", ["a", "b"], True),
        ("engine", ["engine"], False),
        ("c", ["c"], True),
        ("engine2", ["engine2"], False),  # engines are never merged: each is its own stage
        ("engine3", ["engine3"], False),
    ]
    timer = StageTimer(torch.device("cpu"), enabled=True)
    timer.begin()
    phase.run_eager(timer)
    stages, _ = timer.finish()
    assert calls == ["a", "b", "engine", "c", "engine2", "engine3"] and set(stages) == set(calls)


def test_cuda_graphs_need_cuda() -> None:
    engines = pytest.importorskip("tests.gt_engines").GroundTruthEngines(torch.zeros(1, 32, 32, dtype=torch.bool), (32, 32)).engine_set()
    with pytest.raises(SessionError, match="CUDA"):
        Session(engines, cuda_graphs=True)
    assert not Session(engines).cuda_graphs


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_only_fully_capturable_steps_become_one_graph(runtime_assets: RuntimeAssets, backend: str) -> None:
    from eamstcn.data.synth import generate_sequence

    clip = generate_sequence(seed=1, frames=3, height=FRAME_SIZE[0], width=FRAME_SIZE[1], objects=1)
    with open_engines(runtime_assets.engines, runtime_assets.checkpoint, backend=backend) as engines:
        session = Session(engines, MemoryConfig(capacity=3), SaveConfig())
        session.step(torch.from_numpy(clip.frames[0]), torch.from_numpy(clip.masks[0]))
        fused = session._core.fused_step(1, FRAME_SIZE, pool=None)  # noqa: SLF001 - built, never captured on the CPU
    if backend == "onnxruntime" or not conditional_nodes_available():
        assert fused is None
    else:
        assert isinstance(fused, FusedStep) and not fused.ready and fused.predicate is session._core.pending  # noqa: SLF001
        assert [p.name for p in fused.store.pieces] == ["memory_write", "value_encoder", "memory_write"]


def test_the_host_sees_the_pending_store_flag_on_the_cpu(runtime_assets: RuntimeAssets) -> None:
    from eamstcn.data.synth import generate_sequence

    clip = generate_sequence(seed=2, frames=6, height=FRAME_SIZE[0], width=FRAME_SIZE[1], objects=1)
    with open_engines(runtime_assets.engines, backend="onnxruntime") as engines:
        session = Session(engines, MemoryConfig(capacity=3), SaveConfig(mode="fixed", save_every=2))
        frames = [torch.from_numpy(frame) for frame in clip.frames]
        session.step(frames[0], torch.from_numpy(clip.masks[0]))
        mirror = session._core.mirror  # noqa: SLF001
        seen = []
        for t in range(1, 6):
            session.step(frames[t], is_last=t == 5)
            seen.append(mirror.peek())
    assert seen == [False, True, False, True, False]  # the last frame is never stored

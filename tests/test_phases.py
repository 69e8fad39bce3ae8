"""Which path a steady frame takes, and the pieces of each phase.

The captures themselves need CUDA (tests/test_step_steady.py, marked gpu); what decides
them is plain Python and is checked here.
"""

from __future__ import annotations

import pytest
import torch

from eamstcn.runtime.config import MemoryConfig, SaveConfig
from eamstcn.runtime.cuda_graphs import EAGER, GraphedStep
from eamstcn.runtime.engines.factory import open_engines
from eamstcn.runtime.session import Session, SessionError
from eamstcn.runtime.step_core import Phase
from eamstcn.runtime.timing import StageTimer
from tests.helpers.assets import FRAME_SIZE, RuntimeAssets


def test_a_phase_runs_its_pieces_in_order_each_its_own_stage() -> None:
    calls: list[str] = []
    phase = Phase("frame", tuple((name, lambda name=name: calls.append(name)) for name in ("a", "engine", "b")))
    timer = StageTimer(torch.device("cpu"), enabled=True)
    timer.begin()
    phase.run_eager(timer)
    stages, _ = timer.finish()
    phase.run()  # untimed, as under capture
    assert calls == ["a", "engine", "b"] * 2 and set(stages) == {"a", "engine", "b"}


def test_cuda_graphs_need_cuda() -> None:
    engines = pytest.importorskip("tests.gt_engines").GroundTruthEngines(torch.zeros(1, 32, 32, dtype=torch.bool), (32, 32)).engine_set()
    with pytest.raises(SessionError, match="CUDA"):
        Session(engines, cuda_graphs=True)
    assert not Session(engines).cuda_graphs and Session(engines).step_mode == EAGER


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_the_graphed_step_is_the_store_under_the_pending_flag_then_the_frame(runtime_assets: RuntimeAssets, backend: str) -> None:
    from eamstcn.data.synth import generate_sequence

    clip = generate_sequence(seed=1, frames=3, height=FRAME_SIZE[0], width=FRAME_SIZE[1], objects=1)
    with open_engines(runtime_assets.engines, runtime_assets.checkpoint, backend=backend) as engines:
        session = Session(engines, MemoryConfig(capacity=3), SaveConfig())
        session.step(torch.from_numpy(clip.frames[0]), torch.from_numpy(clip.masks[0]))
        core = session._core  # noqa: SLF001 - built, never captured on the CPU
        step = core.graphed_step(1, FRAME_SIZE, pool=None)
    assert isinstance(step, GraphedStep) and step.graph is None and step.pending is core.pending
    assert [name for name, _ in step.store.pieces] == ["memory_write", "value_encoder", "memory_write"]
    assert [name for name, _ in step.frame.pieces][:2] == ["preprocess", "key_encoder"]
    assert core.graphed_step(1, FRAME_SIZE, pool=None) is step  # one per (K, frame size)


def test_onnxruntime_engines_say_why_they_are_not_graphed(runtime_assets: RuntimeAssets, monkeypatch: pytest.MonkeyPatch) -> None:
    """On CUDA a session wants one graph; engines that cannot be captured get the eager
    path and a note naming the reason (the _can_graph check, run here on the CPU)."""
    with open_engines(runtime_assets.engines, backend="onnxruntime") as engines:
        session = Session(engines)
        assert not session._can_graph()  # noqa: SLF001
    assert session.notes and "cannot be captured" in session.notes[0]


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

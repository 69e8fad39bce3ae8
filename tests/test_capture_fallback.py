"""A per-phase capture that fails falls back to eager with one notice; the step mode is
named from what this torch and these engines allow. (Fakes stand in for CUDA here; the
real captures are checked on a GPU by tests/test_step_steady.py.)"""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch

from eamstcn.runtime import cuda_graphs
from eamstcn.runtime.cuda_graphs import EAGER, ONE_GRAPH, PER_PHASE, GraphedPhase, step_mode
from eamstcn.runtime.phases import Phase, Piece
from eamstcn.runtime.timing import StageTimer


class _Graph:
    def replay(self) -> None:
        raise AssertionError("a failed capture must never be replayed")


def test_a_failed_capture_runs_the_phase_eagerly_with_one_notice(monkeypatch: pytest.MonkeyPatch) -> None:
    @contextmanager
    def failing_capture(graph, **kwargs):  # noqa: ANN001, ANN003
        capturing["now"] = True  # capturing runs nothing on a GPU
        yield
        capturing["now"] = False
        raise RuntimeError("CUDA error: operation not permitted when stream is capturing\ndetails")

    monkeypatch.setattr(torch.cuda, "current_stream", lambda *args: None)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", _Graph)
    monkeypatch.setattr(torch.cuda, "graph", failing_capture)
    runs: list[str] = []
    capturing = {"now": False}

    def piece(name: str):  # noqa: ANN202
        return Piece(name, lambda: None if capturing["now"] else runs.append(name))

    phase = Phase("frame", (piece("a"), piece("b")))
    notes: list[str] = []
    graphed = GraphedPhase(phase, pool=None, notify=notes.append)
    timer = StageTimer(torch.device("cpu"))
    for _ in range(4):
        graphed.run(timer)
    # Every frame did its work once: eager warm-up, the failed capture redone eagerly, eager.
    assert runs == ["a", "b"] * 4
    assert graphed.failed == "CUDA error: operation not permitted when stream is capturing"
    assert notes == ["CUDA graph capture of the frame phase failed (CUDA error: operation not permitted when stream is capturing): it runs eagerly"]


def test_step_modes() -> None:
    assert step_mode(graphs=False, capturable=True, fused_ok=True, capture_failed=False) == EAGER
    assert step_mode(graphs=True, capturable=True, fused_ok=True, capture_failed=False) == ONE_GRAPH
    assert step_mode(graphs=True, capturable=True, fused_ok=False, capture_failed=False) == PER_PHASE  # no conditional nodes
    assert step_mode(graphs=True, capturable=False, fused_ok=True, capture_failed=False) == PER_PHASE  # ONNX Runtime
    assert step_mode(graphs=True, capturable=True, fused_ok=False, capture_failed=True).startswith(PER_PHASE + ", eager")


def test_a_torch_without_conditional_nodes_is_detected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "CUDAGraph", _Graph)  # a torch whose graphs lack the API
    assert not cuda_graphs.conditional_nodes_available()


def test_a_cpu_session_names_its_step_mode_eager() -> None:
    from tests.gt_engines import GroundTruthEngines
    from eamstcn.runtime.session import Session

    fake = GroundTruthEngines(torch.zeros(2, 32, 32, dtype=torch.bool), (32, 32), max_objects=2)
    assert Session(fake.engine_set()).step_mode == EAGER

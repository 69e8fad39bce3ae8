"""A capture that fails moves the session to the eager path with one note, and the frame
it failed on is still computed. (Fakes stand in for CUDA here; the real captures are
checked on a GPU by tests/test_step_steady.py.)"""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch

from eamstcn.runtime import cuda_graphs
from eamstcn.runtime.config import MemoryConfig, SaveConfig
from eamstcn.runtime.cuda_graphs import EAGER, ONE_GRAPH, CaptureError
from eamstcn.runtime.session import Session
from tests.gt_engines import GroundTruthEngines

MESSAGE = "CUDA error: operation not permitted when stream is capturing"


class _Graph:
    """A CUDA graph whose capture API exists; it must never be replayed."""

    def begin_capture_to_if_node(self, flag) -> None:  # noqa: ANN001
        pass

    def end_capture_to_conditional_node(self) -> None:
        pass

    def replay(self) -> None:
        raise AssertionError("a failed capture must never be replayed")


@pytest.fixture
def failing_capture(monkeypatch: pytest.MonkeyPatch) -> dict[str, bool]:
    """torch.cuda.graph that fails when the capture ends (as CUDA reports errors) or, when
    ``capturing["at_start"]`` is set, before its body runs (the fakes here would really
    run the work a real capture only records)."""
    capturing = {"now": False, "at_start": False}

    @contextmanager
    def capture(graph, **kwargs):  # noqa: ANN001, ANN003
        if capturing["at_start"]:
            raise RuntimeError(f"{MESSAGE}\ndetails")
        capturing["now"] = True
        try:
            yield
        finally:
            capturing["now"] = False
        raise RuntimeError(f"{MESSAGE}\ndetails")

    monkeypatch.setattr(torch.cuda, "current_stream", lambda *args: None)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", _Graph)
    monkeypatch.setattr(torch.cuda, "graph", capture)
    return capturing


def _clip(frames: int = 8):
    """Ground-truth engines over a square that moves, its frames and first mask."""
    masks = torch.zeros(frames, 32, 32, dtype=torch.bool)
    for t in range(frames):
        masks[t, 4 + t : 14 + t, 6:16] = True
    generator = torch.Generator().manual_seed(3)
    video = [torch.randint(0, 256, (32, 32, 3), dtype=torch.uint8, generator=generator) for _ in range(frames)]
    return GroundTruthEngines(masks, (32, 32)), video, masks[0].to(torch.uint8)


def test_a_failed_capture_falls_back_to_eager_with_one_note_and_the_same_results(failing_capture) -> None:
    failing_capture["at_start"] = True
    results = {}
    for forced in (False, True):
        fake, video, first = _clip()
        session = Session(fake.engine_set(), MemoryConfig(capacity=3), SaveConfig(mode="fixed", save_every=2))
        if forced:
            session._graphed = True  # noqa: SLF001 - as on CUDA with capturable engines
            assert session.step_mode == ONE_GRAPH
        outputs = [session.step(frame, first if t == 0 else None).clone() for t, frame in enumerate(video)]
        results[forced] = (outputs, session.stored_frames, list(session.notes), session.step_mode)
    eager, graphed = results[False], results[True]
    assert graphed[3] == EAGER
    assert graphed[2] == [f"CUDA graph capture failed ({MESSAGE}): eager steps, the store decided by the host"]
    assert graphed[1] == eager[1]  # the same frames stored
    for a, b in zip(eager[0], graphed[0], strict=True):  # frame 2, whose capture failed, included
        torch.testing.assert_close(a, b)


def test_the_capture_error_is_one_line_and_nothing_ran(failing_capture) -> None:
    from eamstcn.runtime.step_core import Phase

    runs: list[str] = []
    piece = lambda name: (name, lambda: None if failing_capture["now"] else runs.append(name))  # noqa: E731
    step = cuda_graphs.GraphedStep(Phase("store", (piece("store"),)), Phase("frame", (piece("frame"),)), torch.tensor(True), pool=None)
    from eamstcn.runtime.timing import StageTimer

    timer = StageTimer(torch.device("cpu"))
    step.run(timer, store_due=True)  # the eager warm-up
    assert runs == ["store", "frame"]
    with pytest.raises(CaptureError, match=f"^{MESSAGE}$"):
        step.run(timer, store_due=True)
    assert runs == ["store", "frame"] and step.graph is None


def test_a_torch_without_conditional_nodes_is_detected(monkeypatch: pytest.MonkeyPatch) -> None:
    class Bare:  # a torch whose graphs lack the API
        pass

    monkeypatch.setattr(torch.cuda, "CUDAGraph", Bare)
    assert not cuda_graphs.conditional_nodes_available()

"""Capture a :class:`~eamstcn.runtime.phases.Phase` into CUDA graphs once, replay it after.

A phase's capturable pieces touch only buffers allocated before capture, so a captured
graph reads and writes the same addresses every replay; what the engines allocate
inside (the torch backend's activations) comes from one private memory pool shared by
all the session's graphs, which are replayed one after another on one stream and keep
no tensor alive past their end.

Capture needs the work to have run eagerly once on the same stream first (cuBLAS and
cuDNN initialise lazily); :class:`GraphedPhase` runs eagerly until then. Capturing runs
nothing, so the first capture is followed by a replay. Capture is per object count K
(the caller keeps one :class:`GraphedPhase` per K) and happens outside steady frames.

:class:`FusedStep` goes further when every piece is capturable (the torch backend): the
store of the previous frame and the frame become one graph, the store inside a CUDA
graph conditional node on a device flag (CUDA 12.4+, torch's
``CUDAGraph.begin_capture_to_if_node``): the device decides at t and acts at t+1 with no
host involvement at all, and an unneeded store costs nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from eamstcn.runtime.phases import Phase, Piece
from eamstcn.runtime.timing import StageTimer


#: The step modes a session can run, as named in the engine line, the bench and its JSON.
ONE_GRAPH = "one CUDA graph, conditional store"
PER_PHASE = "per-phase CUDA graphs"
EAGER = "eager"


def step_mode(graphs: bool, capturable: bool, fused_ok: bool, capture_failed: bool) -> str:
    """The step mode of a session: ``graphs`` on, every engine ``capturable``, the
    one-graph step possible (this torch has conditional nodes, its capture has not
    failed), a per-phase capture failed."""
    if not graphs:
        return EAGER
    if capturable and fused_ok:
        return ONE_GRAPH
    return f"{PER_PHASE}, eager where capture failed" if capture_failed else PER_PHASE


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class _Segment:
    def __init__(self, name: str, pieces: tuple[Piece, ...], capturable: bool) -> None:
        self.name = name
        self.pieces = pieces
        self.capturable = capturable
        self.graph: torch.cuda.CUDAGraph | None = None
        self.eager_runs = 0
        self.failed: str | None = None  # why capture failed; the segment then stays eager

    def run(self, pool: Any, stream: torch.cuda.Stream) -> None:
        if not self.capturable or self.failed is not None or self.eager_runs < 1:
            self._run_eager()
            return
        if self.graph is None:
            graph = torch.cuda.CUDAGraph()
            try:
                # thread_local: other threads (an output writer) may use CUDA while we capture.
                with torch.cuda.graph(graph, pool=pool, stream=stream, capture_error_mode="thread_local"):
                    for piece in self.pieces:
                        piece.run()
            except RuntimeError as error:
                # Capturing ran nothing: this frame's work still has to be done, eagerly.
                self.failed = _first_line(error)
                self._run_eager()
                return
            self.graph = graph
        self.graph.replay()

    def _run_eager(self) -> None:
        for piece in self.pieces:
            piece.run()
        self.eager_runs += 1


class GraphedPhase:
    """A phase whose capturable runs of pieces are CUDA graphs after one eager run."""

    def __init__(self, phase: Phase, pool: Any, notify: Callable[[str], None] | None = None) -> None:
        self.phase = phase
        self._pool = pool
        self._notify = notify
        self._segments = [_Segment(*segment) for segment in phase.segments()]
        self._told = False

    @property
    def captured(self) -> bool:
        """Every capturable segment has its graph."""
        return all(s.graph is not None for s in self._segments if s.capturable)

    @property
    def failed(self) -> str | None:
        """Why a capture failed (those segments run eagerly), or None."""
        return next((s.failed for s in self._segments if s.failed is not None), None)

    def run(self, timer: StageTimer) -> None:
        """Run on the current stream (which must not be the legacy default stream).
        A segment whose capture fails runs eagerly from then on, with one notice."""
        stream = torch.cuda.current_stream()
        for segment in self._segments:
            with timer.stage(segment.name):
                segment.run(self._pool, stream)
        if not self._told and self.failed is not None:
            self._told = True
            if self._notify is not None:
                self._notify(f"CUDA graph capture of the {self.phase.name} phase failed ({self.failed}): it runs eagerly")


def conditional_nodes_available() -> bool:
    """This torch has CUDA graph conditional nodes (``CUDAGraph.begin_capture_to_if_node``:
    not a documented API, so checked by name; a driver that lacks them shows at capture)."""
    return hasattr(torch.cuda.CUDAGraph, "begin_capture_to_if_node") and hasattr(torch.cuda.CUDAGraph, "end_capture_to_conditional_node")


class FusedStep:
    """``if predicate: store`` then ``frame``, captured as one CUDA graph.

    The caller runs both phases eagerly (its usual path) until :attr:`ready`; then
    :meth:`run` captures once and replays. ``predicate`` is a 0-d bool CUDA tensor read by
    the device when the graph runs. A capture that fails (a driver without conditional
    nodes) marks the step :attr:`broken`; the caller falls back to per-phase graphs.
    """

    def __init__(self, store: Phase, frame: Phase, predicate: torch.Tensor, pool: Any) -> None:
        self.store = store
        self.frame = frame
        self.predicate = predicate
        self._pool = pool
        self.graph: torch.cuda.CUDAGraph | None = None
        self.warm_frames = 0  # eager runs of the frame phase seen by this step
        self.broken: str | None = None

    @property
    def ready(self) -> bool:
        return self.broken is None and (self.graph is not None or self.warm_frames >= 1)

    def run(self, timer: StageTimer) -> None:
        with timer.stage("step"):
            if self.graph is None:
                self._capture()
            assert self.graph is not None
            self.graph.replay()

    def _capture(self) -> None:
        graph = torch.cuda.CUDAGraph()
        stream = torch.cuda.current_stream()
        with torch.cuda.graph(graph, pool=self._pool, stream=stream, capture_error_mode="thread_local"):
            graph.begin_capture_to_if_node(self.predicate)
            try:
                for piece in self.store.pieces:
                    piece.run()
            finally:
                graph.end_capture_to_conditional_node()
            for piece in self.frame.pieces:
                piece.run()
        self.graph = graph


def new_pool() -> Any:
    """A memory pool handle for the graphs of one session."""
    return torch.cuda.graph_pool_handle()

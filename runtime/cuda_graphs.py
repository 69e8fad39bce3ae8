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

from typing import Any

import torch

from eamstcn.runtime.phases import Phase, Piece
from eamstcn.runtime.timing import StageTimer


class _Segment:
    def __init__(self, name: str, pieces: tuple[Piece, ...], capturable: bool) -> None:
        self.name = name
        self.pieces = pieces
        self.capturable = capturable
        self.graph: torch.cuda.CUDAGraph | None = None
        self.eager_runs = 0

    def run(self, pool: Any, stream: torch.cuda.Stream) -> None:
        if not self.capturable or self.eager_runs < 1:
            for piece in self.pieces:
                piece.run()
            self.eager_runs += 1
            return
        if self.graph is None:
            graph = torch.cuda.CUDAGraph()
            # thread_local: other threads (an output writer) may use CUDA while we capture.
            with torch.cuda.graph(graph, pool=pool, stream=stream, capture_error_mode="thread_local"):
                for piece in self.pieces:
                    piece.run()
            self.graph = graph
        self.graph.replay()


class GraphedPhase:
    """A phase whose capturable runs of pieces are CUDA graphs after one eager run."""

    def __init__(self, phase: Phase, pool: Any) -> None:
        self.phase = phase
        self._pool = pool
        self._segments = [_Segment(*segment) for segment in phase.segments()]

    @property
    def captured(self) -> bool:
        """Every capturable segment has its graph."""
        return all(s.graph is not None for s in self._segments if s.capturable)

    def run(self, timer: StageTimer) -> None:
        """Run on the current stream (which must not be the legacy default stream)."""
        stream = torch.cuda.current_stream()
        for segment in self._segments:
            with timer.stage(segment.name):
                segment.run(self._pool, stream)


def conditional_nodes_available() -> bool:
    """This torch can capture into CUDA graph conditional nodes."""
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

"""The graphed step: a whole steady frame as one CUDA graph, the store in a conditional node.

When every engine can be captured (the torch and TensorRT backends) and this torch has
CUDA graph conditional nodes (CUDA 12.4+, ``CUDAGraph.begin_capture_to_if_node``), the
store of frame t-1 and frame t are captured once per (K, frame size) into one graph::

    if pending: store(t-1)      # a conditional node on the device's own decision
    frame(t)                    # ends by writing the next ``pending``

The device decides at t and acts at t+1 with no host involvement at all, and an unneeded
store costs nothing. Everything the graph reads and writes was allocated before capture
(the step core's buffers), so every replay sees the same addresses; what the engines
allocate inside (the torch backend's activations) comes from one private memory pool per
session, and no tensor outlives a replay.

Capture needs one eager run on the same stream first (cuBLAS and cuDNN initialise
lazily): the first steady frame of a (K, size) runs eagerly, the second captures and
replays. A capture that fails raises :class:`CaptureError` before anything ran; the
session then runs every later frame on its other path, eager with the store decided by
the host (:mod:`eamstcn.runtime.session`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from eamstcn.runtime.timing import StageTimer

if TYPE_CHECKING:
    from eamstcn.runtime.step_core import Phase

#: The two ways a steady frame runs, as named in the engine line, the bench and its JSON.
ONE_GRAPH = "one CUDA graph, conditional store"
EAGER = "eager"


class CaptureError(RuntimeError):
    """The step could not be captured (nothing ran); the message is one line."""


def conditional_nodes_available() -> bool:
    """This torch has CUDA graph conditional nodes (``CUDAGraph.begin_capture_to_if_node``:
    not a documented API, so checked by name; a driver that lacks them shows at capture)."""
    return hasattr(torch.cuda.CUDAGraph, "begin_capture_to_if_node") and hasattr(torch.cuda.CUDAGraph, "end_capture_to_conditional_node")


def new_pool() -> Any:
    """A memory pool handle for the graphs of one session."""
    return torch.cuda.graph_pool_handle()


class GraphedStep:
    """``if pending: store`` then ``frame``, run eagerly once, then captured and replayed.

    ``pending`` is a 0-d bool CUDA tensor that the device reads when the graph runs.
    """

    def __init__(self, store: Phase, frame: Phase, pending: torch.Tensor, pool: Any) -> None:
        self.store = store
        self.frame = frame
        self.pending = pending
        self._pool = pool
        self.graph: torch.cuda.CUDAGraph | None = None
        self._warm = False

    def run(self, timer: StageTimer, store_due: bool) -> None:
        """One steady frame. ``store_due``: the host's knowledge that a store may be
        pending (the eager warm-up runs it, masked by ``pending`` on the device)."""
        if not self._warm:
            if store_due:
                self.store.run_eager(timer)
            self.frame.run_eager(timer)
            self._warm = True
            return
        with timer.stage("step"):
            if self.graph is None:
                self.graph = self._capture()
            self.graph.replay()

    def _capture(self) -> torch.cuda.CUDAGraph:
        try:
            graph = torch.cuda.CUDAGraph()
            # thread_local: other threads (the output writer) may use CUDA while we capture.
            with torch.cuda.graph(graph, pool=self._pool, stream=torch.cuda.current_stream(), capture_error_mode="thread_local"):
                graph.begin_capture_to_if_node(self.pending)
                try:
                    self.store.run()
                finally:
                    graph.end_capture_to_conditional_node()
                self.frame.run()
        except RuntimeError as error:
            text = str(error).strip()
            raise CaptureError(text.splitlines()[0] if text else type(error).__name__) from error
        return graph

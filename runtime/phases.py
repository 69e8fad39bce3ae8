"""A phase of the step: named pieces of device work that touch only fixed buffers.

The step core describes each steady phase (the store of the previous frame, the frame
itself) as a list of :class:`Piece`; how it runs is decided here: eagerly, piece by
piece, with a timer stage around each; or, on CUDA, with every maximal run of
graph-capturable pieces captured once into a CUDA graph and replayed
(:mod:`eamstcn.runtime.cuda_graphs`). With the torch backend every piece is capturable,
so a phase is one graph; with ONNX Runtime the torch work between its runs is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from eamstcn.runtime.timing import StageTimer


@dataclass(frozen=True)
class Piece:
    """``run()`` enqueues device work into fixed buffers; ``name`` is its timer stage;
    ``capturable``: no host sync, no host-side state change, safe in a CUDA graph."""

    name: str
    run: Callable[[], object]
    capturable: bool = True


@dataclass(frozen=True)
class Phase:
    name: str
    pieces: tuple[Piece, ...]

    def run_eager(self, timer: StageTimer) -> None:
        for piece in self.pieces:
            with timer.stage(piece.name):
                piece.run()

    def segments(self) -> list[tuple[str, tuple[Piece, ...], bool]]:
        """Maximal runs of pieces with the same capturability: (stage name, pieces,
        capturable). A run of several pieces is timed as one stage named after the phase."""
        runs: list[list[Piece]] = []
        for piece in self.pieces:
            if runs and runs[-1][0].capturable == piece.capturable and piece.capturable:
                runs[-1].append(piece)
            else:
                runs.append([piece])
        return [(run[0].name if len(run) == 1 else self.name, tuple(run), run[0].capturable) for run in runs]

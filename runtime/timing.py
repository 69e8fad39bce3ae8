"""Per-stage timings of a session step, free when switched off.

On CUDA, stages are bracketed by CUDA events and resolved once per step (one wait on the
last event, only when timing is on); on the CPU, ``time.perf_counter``. With timing off
:meth:`StageTimer.stage` returns a shared no-op context: no events, no syncs.
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

import torch

#: Stage names in step order; a stage that did not run this frame is absent from ``stages``.
#: A steady frame first stores the previous frame when the save rule decided so
#: ("memory_write" around "value_encoder"). With CUDA graphs and timing, a captured run
#: of stages is one stage named after its phase, "store" or "frame", and a whole step
#: captured as one graph (the torch backend) is "step".
STAGES = (
    "memory_write", "value_encoder", "store", "preprocess", "key_encoder", "memory_read", "decoder", "aggregate",
    "save_decision", "postprocess", "frame", "step",
)  # fmt: skip

_NO_OP = nullcontext()


@dataclass
class StepStats:
    """What one step cost and did.

    ``stages`` maps a stage name (see :data:`STAGES`) to milliseconds; ``total_ms`` spans
    the whole step; ``saved`` says whether the frame entered memory; ``memory_frames`` is
    the bank's fill after the step; ``objects`` the number of objects tracked.
    """

    frame: int
    stages: dict[str, float] = field(default_factory=dict)
    total_ms: float = 0.0
    saved: bool = False
    memory_frames: int = 0
    objects: int = 0


class _Stage(AbstractContextManager):
    def __init__(self, timer: StageTimer, name: str) -> None:
        self._timer, self._name = timer, name

    def __enter__(self) -> None:
        self._timer._mark(self._name, start=True)

    def __exit__(self, *exc: object) -> None:
        self._timer._mark(self._name, start=False)


class StageTimer:
    """Collects (start, end) marks per stage for one step at a time."""

    def __init__(self, device: torch.device, enabled: bool = False) -> None:
        self.enabled = enabled
        self._cuda = device.type == "cuda"
        self._device = device
        self._marks: list[tuple[str, object, object]] = []
        self._open: dict[str, object] = {}
        self._step_start: object = None
        self._pool: list[torch.cuda.Event] = []  # recycled events: no allocation per frame

    def _now(self) -> object:
        if self._cuda:
            event = self._pool.pop() if self._pool else torch.cuda.Event(enable_timing=True)
            event.record(torch.cuda.current_stream(self._device))
            return event
        return time.perf_counter()

    def begin(self) -> None:
        self._marks.clear()
        self._open.clear()
        if self.enabled:
            self._step_start = self._now()

    def stage(self, name: str) -> AbstractContextManager:
        return _Stage(self, name) if self.enabled else _NO_OP

    def _mark(self, name: str, start: bool) -> None:
        if start:
            self._open[name] = self._now()
        else:
            self._marks.append((name, self._open.pop(name), self._now()))

    def finish(self) -> tuple[dict[str, float], float]:
        """(stage -> ms, total ms) of the step; ({}, 0.0) when disabled. Waits for the GPU."""
        if not self.enabled or self._step_start is None:
            return {}, 0.0
        end = self._now()
        stages: dict[str, float] = {}
        if self._cuda:
            end.synchronize()  # type: ignore[attr-defined]
            for name, first, last in self._marks:
                stages[name] = stages.get(name, 0.0) + first.elapsed_time(last)  # type: ignore[attr-defined]
            total = self._step_start.elapsed_time(end)  # type: ignore[attr-defined]
            self._pool.extend([e for _, a, b in self._marks for e in (a, b)] + [self._step_start, end])  # type: ignore[list-item]
        else:
            for name, first, last in self._marks:
                stages[name] = stages.get(name, 0.0) + (last - first) * 1000.0  # type: ignore[operator]
            total = (end - self._step_start) * 1000.0  # type: ignore[operator]
        self._marks.clear()
        self._step_start = None
        return stages, total

"""The host's view of the device's last save decision, without waiting for it.

The save rule decides on the device at frame t; the store of frame t runs at the start of
frame t+1 (the session keeps frame t's buffers until then). To skip the value encoder
when the answer is "no", the host looks at a host copy of the decision:

- CUDA: after the frame's work is enqueued, the decision is copied into pinned memory by
  a non-blocking copy (outside any CUDA graph) and an event is recorded after it. :meth:`peek` answers only if
  the event has completed (``event.query()``, which never blocks); otherwise it answers
  ``None`` and the session runs the store anyway, masked by the device flag, so what is
  stored is exact either way: an unknown answer costs a value-encoder run, never a sync.
- CPU: device memory is host memory; :meth:`peek` reads the decision buffer through a
  numpy view taken once (no torch call, nothing to wait for).
"""

from __future__ import annotations

import torch


class DecisionMirror:
    """Host copy of a 0-d bool device tensor (``watch`` it once; ``publish`` per frame)."""

    def __init__(self, device: torch.device) -> None:
        self._cuda = device.type == "cuda"
        self._source: torch.Tensor | None = None
        if self._cuda:
            self._host = torch.zeros(1, dtype=torch.bool, pin_memory=True)
            self._view = self._host.numpy()
            self._event = torch.cuda.Event()
            self._recorded = False

    def watch(self, decision: torch.Tensor) -> None:
        """Mirror this 0-d bool buffer from now on (call outside the steady step)."""
        if decision is self._source:
            return
        self._source = decision
        if not self._cuda:
            self._view = decision.numpy()  # shares memory: reads see every later write

    def publish(self) -> None:
        """Start the copy of the decision to the host (async; no wait)."""
        if self._cuda:
            assert self._source is not None
            self._host[0].copy_(self._source, non_blocking=True)

    def record(self) -> None:
        """After :meth:`publish`: mark the point the host copy is complete at."""
        if self._cuda:
            self._event.record(torch.cuda.current_stream())
            self._recorded = True

    def peek(self) -> bool | None:
        """The last published decision, or None when the device has not produced it yet."""
        if self._cuda:
            if not self._recorded or not self._event.query():
                return None
            return bool(self._view[0])
        return bool(self._view[()])

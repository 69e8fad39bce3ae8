"""Objects whose mask has stayed empty for a while: said once, recorded per frame.

Fed the label map the output writer already holds on the host (its writer thread), so
the segmentation loop gains no work, no device read and no allocation for it; one
``bincount`` over a uint8 map per frame, off the loop.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import numpy as np

#: Frames an object's mask may stay empty before it is called lost.
DEFAULT_LOST_AFTER = 30


class LostObjects:
    """Counts, per object id, the frames in a row its mask has been empty.

    An id counts once it has been seen in some frame. At ``after`` empty frames in a
    row it is lost: ``notify`` says so once (and once again when it comes back).
    """

    def __init__(self, after: int = DEFAULT_LOST_AFTER, notify: Callable[[str], None] | None = None) -> None:
        if after < 1:
            raise ValueError(f"after must be at least 1, got {after}")
        self.after = after
        self._notify = notify or (lambda message: None)
        self._seen = np.zeros(256, bool)
        self._empty_for = np.zeros(256, np.int64)
        self._lost = np.zeros(256, bool)
        # Frames at which a new stream starts (r in the window): appended by the loop's
        # thread, consumed by the writer's (deque append/popleft are atomic).
        self._restarts: deque[int] = deque()

    @property
    def lost_ids(self) -> tuple[int, ...]:
        return tuple(int(i) for i in np.flatnonzero(self._lost))

    def restart(self, index: int) -> None:
        """A new stream starts at frame ``index`` and its ids start again at 1: from that
        frame on, ids seen before mean nothing. Safe to call from another thread than
        :meth:`update`'s; takes effect when ``update`` reaches ``index``."""
        self._restarts.append(index)

    def update(self, index: int, labels: np.ndarray) -> tuple[int, ...]:
        """One frame's labels (H, W) uint8 object ids -> the ids lost at this frame."""
        while self._restarts and self._restarts[0] <= index:
            self._restarts.popleft()
            for state in (self._seen, self._empty_for, self._lost):
                state[:] = 0
        present = np.bincount(labels.ravel(), minlength=256)[:256] > 0
        present[0] = False
        self._seen |= present
        absent = self._seen & ~present
        self._empty_for[present] = 0
        self._empty_for[absent] += 1
        for object_id in np.flatnonzero(present & self._lost):
            self._notify(f"object {object_id} is back at frame {index}")
        self._lost &= ~present
        for object_id in np.flatnonzero(absent & ~self._lost & (self._empty_for >= self.after)):
            self._notify(
                f"object {object_id} lost at frame {index}: its mask has been empty for {self.after} frames "
                f"(re-mark it with --add-box FRAME:X,Y,W,H:{object_id}, or b in the window)"
            )
            self._lost[object_id] = True
        return self.lost_ids

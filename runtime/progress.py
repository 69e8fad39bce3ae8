"""How far a run is, while frames are segmented: a tqdm bar on an interactive terminal;
where stderr is a file or a pipe (a service, a log), one plain ``progress:`` line every
few seconds, so that a long run is never silent."""

from __future__ import annotations

import sys
import time
from typing import TextIO

#: Seconds between two plain progress lines when stderr is not a terminal.
PROGRESS_EVERY_S = 10.0


class Progress:
    """``update`` after each frame; ``close`` (or leaving the ``with`` block) clears the bar
    before the outputs are finished, whose notices would otherwise print through it."""

    def __init__(self, total: int | None, enabled: bool = True, every_s: float = PROGRESS_EVERY_S,
                 stream: TextIO | None = None) -> None:
        self.total = total
        self.every_s = every_s
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self._bar = None
        self._last = time.monotonic()
        if enabled and _is_tty(self.stream):
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="frame", dynamic_ncols=True, leave=False, file=self.stream)

    def update(self, frames: int, seconds: float) -> None:
        """``frames`` segmented so far in ``seconds``."""
        if not self.enabled:
            return
        fps = frames / seconds if seconds > 0 else 0.0
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix_str(f"{fps:.1f} FPS", refresh=False)
            return
        now = time.monotonic()
        if now - self._last >= self.every_s:
            self._last = now
            of = f"/{self.total}" if self.total else ""
            print(f"progress: frame {frames}{of}, {fps:.1f} FPS, {seconds:.0f} s", file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _is_tty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False

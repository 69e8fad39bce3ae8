"""SIGTERM handled like Ctrl-C in ``eamstcn-run``.

``systemctl stop`` and ``docker stop`` send SIGTERM, whose default action kills the process
at once: the overlay video is never finished (only ``.overlay.partial.mp4`` is left) and
nothing is said. :func:`install` makes SIGTERM raise :class:`Terminated` (a
KeyboardInterrupt) in the main thread, so the run ends through the path Ctrl-C takes —
the writer drains, ``overlay.mp4`` is finished — and the command exits 143 (128 + 15), as
a process ended by SIGTERM conventionally does.
"""

from __future__ import annotations

import signal

#: Exit status of a run ended by SIGTERM (128 + signal number), and by Ctrl-C.
SIGTERM_EXIT = 128 + signal.SIGTERM
SIGINT_EXIT = 130

_received = False


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived; raised in the main thread, handled like Ctrl-C."""


def _handle(signum: int, frame: object) -> None:
    global _received
    if _received:
        return  # a second SIGTERM must not cut the flush of the outputs short (SIGKILL still can)
    _received = True
    raise Terminated


def install() -> None:
    """Route SIGTERM to :class:`Terminated`; call from the console script's main thread."""
    try:
        signal.signal(signal.SIGTERM, _handle)
    except (ValueError, OSError):  # not the main thread, or a platform without SIGTERM handlers
        pass


def received() -> bool:
    return _received


def exit_code() -> int:
    """143 after SIGTERM, else 130 (Ctrl-C)."""
    return SIGTERM_EXIT if _received else SIGINT_EXIT


def stop_line() -> str:
    """The line that says why the run stopped early."""
    if _received:
        return "terminated (SIGTERM): stopped like Ctrl-C; outputs written so far are kept"
    return "interrupted"

"""The one way a command tells the user something that is not an error.

Every command prints notices the same way: one line, ``notice: ...``, on stderr (stdout
stays for results a script may parse). Modules that report through a callback take
``notify=notice`` as their default, so tests and embedders can collect the lines instead.
"""

from __future__ import annotations

import sys

__all__ = ["notice"]


def notice(message: str) -> None:
    """Print ``notice: <message>`` on stderr (one line, flushed: progress bars share it)."""
    print(f"notice: {message}", file=sys.stderr, flush=True)

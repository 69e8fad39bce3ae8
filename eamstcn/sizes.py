"""Frame sizes as users type them on the command line: the one parser every command uses
(through :func:`eamstcn.cli_errors.size_option`, which turns its errors into usage errors)."""

from __future__ import annotations

import re

_SIZE = re.compile(r"(\d+)(?:\s*[xX*]\s*(\d+))?")


def parse_size(text: str, min_side: int = 1, max_side: int = 8192, short_side: bool = True) -> tuple[int, int]:
    """``"480x854"`` -> (480, 854) as (height, width); ``"480"`` -> (480, 854): the short
    side of a 16:9 frame, long side rounded to an even number (refused when ``short_side``
    is False). Raises ValueError with a one-line reason."""
    match = _SIZE.fullmatch(text.strip())
    if match is None or (not short_side and not match.group(2)):
        wanted = "HxW (480x854) or the short side of a 16:9 frame (480)" if short_side else "both sides, HxW (HEIGHTxWIDTH: 480x854)"
        raise ValueError(f"invalid size {text!r}: give {wanted}")
    height = int(match.group(1))
    width = int(match.group(2)) if match.group(2) else 2 * round(height * 16 / 9 / 2)
    if not (min_side <= height <= max_side and min_side <= width <= max_side):
        raise ValueError(f"each side must be in {min_side}..{max_side} pixels, got {height}x{width}")
    return height, width

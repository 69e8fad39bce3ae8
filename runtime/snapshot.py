"""``eamstcn-run --snapshot first.jpg``: the source's first frame to a file, then exit.

For people who paint a precise first mask with their own tools: the frame is exactly what
the run will see (same source, same size, RGB), so the mask they paint fits it.
"""

from __future__ import annotations

from pathlib import Path

from eamstcn.data.davis_io import write_frame
from eamstcn.runtime.prompts import PromptError
from eamstcn.runtime.sources import open_source

SUFFIXES = (".jpg", ".jpeg", ".png")


def write_snapshot(path: Path, camera: int | None, video: str | None, frames: Path | None) -> Path:
    """Write the first frame of the source to ``path`` (JPEG or PNG by suffix); returns it."""
    if path.suffix.lower() not in SUFFIXES:
        raise PromptError(f"--snapshot {path}: give a .jpg or .png file name")
    if path.is_dir() or not path.absolute().parent.is_dir():
        raise PromptError(f"--snapshot {path}: give a file name in an existing folder")
    source = open_source(camera, video, frames)
    try:
        first = next(iter(source), None)
    finally:
        source.close()
    if first is None:
        raise PromptError(f"--snapshot: {source.info.name} delivered no frame")
    try:
        write_frame(path, first[1])
    except OSError as error:
        raise PromptError(f"--snapshot {path}: cannot write it: {error.strerror or error}") from None
    return path

"""Small file helpers shared by every package (standard library only: the runtime uses them)."""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_target(path: str | os.PathLike[str], suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the body succeeds it replaces ``path``
    (``os.replace``), else it is removed. The one atomic writer: a crash or Ctrl-C leaves
    the old file or the new one, never a torn one. Creates parent folders.

    The temporary file is in the same folder, so the replace is a rename on one file
    system. Its name is unique (pid + random) rather than made by ``mkstemp``, whose 0600
    mode would survive the rename and leave results unreadable to other users: the body
    creates the file, with the process's normal mode (0666 minus the umask). ``suffix``
    ends the temporary name (a video writer picks its container from it).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}{suffix}")
    try:
        yield temp
        os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes | memoryview) -> None:
    """Write ``data`` to ``path`` through :func:`atomic_target`."""
    with atomic_target(path) as temp, open(temp, "xb") as stream:
        stream.write(data)


def file_sha256(path: str | Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def non_utf8_path(path: str | os.PathLike[str]) -> str | None:
    """``path`` shown with its undecodable bytes escaped (``v\\xff.mp4``) when its name is
    not UTF-8, else None. Python keeps such bytes as lone surrogates; OpenCV's C++ API
    crashes (segfault) on them, so the commands refuse them before OpenCV sees one."""
    text = os.fspath(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(text).decode("utf-8", "backslashreplace")
    return None


def output_problem(path: str | os.PathLike[str], folder: bool = True) -> str | None:
    """Why ``path`` cannot be written as an output folder (``folder``) or file, or None.

    Checked before a command starts its work, so a typo costs a second, not the whole run:
    the kind (a file where a folder goes, or the reverse), a file on the way, the nearest
    existing parent writable, each name within the file system's limit (255 bytes).
    """
    # os.path's checks, not Path's: they answer False instead of raising on a name too long.
    absolute = os.path.abspath(os.fspath(path))
    parents = [absolute]
    while os.path.dirname(parents[-1]) != parents[-1]:
        parents.append(os.path.dirname(parents[-1]))
    existing = next(parent for parent in parents if os.path.lexists(parent))
    try:
        name_max = os.pathconf(existing, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):  # no pathconf (Windows) or no answer
        name_max = 255
    for part in Path(os.path.relpath(absolute, existing)).parts:
        if len(os.fsencode(part)) > name_max:
            return f"a name in it is {len(os.fsencode(part))} bytes long; the file system allows {name_max}"
    if existing == absolute:
        if folder and not os.path.isdir(absolute):
            return "is a file, not a folder"
        if not folder and os.path.isdir(absolute):
            return "is a folder, not a file"
        if not os.access(absolute, os.W_OK):
            return "is not writable"
        return None
    if not os.path.isdir(existing):
        return f"{existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable"
    return None

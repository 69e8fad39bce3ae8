"""The bundle folder on disk: refuse what must not be overwritten, install atomically.

A bundle is built in a hidden folder beside its destination (same filesystem, so the final
renames are atomic) and swapped in at the end: readers see the old bundle, the new one or,
for the instant between two renames, none; never a mix or a half-written file.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from eamstcn.export.errors import ExportError
from eamstcn.export.manifest import is_bundle


def check_destination(out: Path) -> None:
    """Refuse to overwrite anything that is not one of our bundles (an empty folder is fine)."""
    if not out.exists() and not out.is_symlink():
        return
    if not out.is_dir() or out.is_symlink():
        raise ExportError(f"{out} exists and is not a folder; refusing to overwrite it (choose another --out)")
    if is_bundle(out) or not any(out.iterdir()):
        return
    raise ExportError(
        f"{out} exists and is not an engine bundle (no eamstcn manifest.json); refusing to overwrite it (choose another --out)"
    )


def _make_parents(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing ancestors; returns those created (to undo on failure)."""
    missing: list[Path] = []
    current = folder
    while not current.exists():
        missing.append(current)
        current = current.parent
    if not current.is_dir():
        raise ExportError(f"cannot create the output folder: {current} is not a folder")
    created: list[Path] = []
    try:
        for path in reversed(missing):
            path.mkdir()
            created.append(path)
    except OSError as error:
        _remove_empty(created)
        raise ExportError(f"cannot create {folder}: {error.strerror or error}") from None
    return created


def _remove_empty(folders: list[Path]) -> None:
    for path in reversed(folders):
        try:
            path.rmdir()
        except OSError:
            break


def _fsync_folder(folder: Path) -> None:
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass  # some filesystems refuse fsync on folders; the rename itself is still atomic
    finally:
        os.close(handle)


def _install(staging: Path, out: Path) -> None:
    """Rename ``staging`` to ``out``; an existing bundle is moved aside first, then deleted."""
    os.chmod(staging, 0o755)  # mkdtemp made it private; a bundle is meant to be shared
    aside: Path | None = None
    if out.exists():
        aside = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, aside)  # replaces the empty placeholder folder
    try:
        os.replace(staging, out)
    except BaseException:
        if aside is not None:
            os.replace(aside, out)
        raise
    _fsync_folder(out.parent)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


@contextmanager
def staged_bundle(out: Path) -> Iterator[Path]:
    """Yield an empty hidden folder beside ``out`` to build the bundle in.

    When the block ends normally the folder is installed at ``out`` (replacing an existing
    bundle); when it raises, the folder and any parent folders made for it are deleted.
    Raises :class:`ExportError` before yielding if ``out`` must not be overwritten or
    cannot be created.
    """
    check_destination(out)
    created = _make_parents(out.parent)
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    except OSError as error:
        _remove_empty(created)
        raise ExportError(f"cannot write to {out.parent}: {error.strerror or error}") from None
    try:
        yield staging
        _install(staging, out)
    except BaseException as error:
        shutil.rmtree(staging, ignore_errors=True)
        _remove_empty(created)
        if isinstance(error, OSError):
            raise ExportError(f"cannot write the bundle to {out}: {error.strerror or error}") from None
        raise

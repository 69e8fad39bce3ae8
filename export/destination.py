"""The bundle folder on disk: refuse what must not be overwritten, install atomically.

A bundle is built in a hidden folder beside its destination (same filesystem, so the final
renames are atomic) and swapped in at the end: readers see the old bundle, the new one or,
for the instant between two renames, none; never a mix or a half-written file.

A process killed with SIGKILL (or a power cut) cannot delete its staging folder, so the
folder's name carries its owner (``.NAME.partial-<pid>@<host>-XXXX``) and the next export
to the same destination removes the ones whose owner is gone (see
:func:`clean_stale_partials`).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
import time
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


#: A staging folder older than this is stale even when its pid looks alive (pids are
#: reused, and a process on another host cannot be asked); exports take minutes.
STALE_AFTER_S = 24 * 3600
_OWNER = re.compile(r"^(?P<pid>\d+)@(?P<host>[A-Za-z0-9_.]*)-")


def _host() -> str:
    """This machine's name, reduced to characters that are safe in a folder name."""
    return re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname())[:40]


def _owner_tag() -> str:
    return f"{os.getpid()}@{_host()}-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    except OSError:
        return True  # cannot tell: keep the folder (the age rule still applies)
    return True


def _is_stale(folder: Path, suffix: str, now: float, max_age_s: float) -> bool:
    """``suffix`` is the name after ``.NAME.partial-`` (or ``.old-``)."""
    try:
        age = now - folder.stat().st_mtime
    except OSError:
        return False
    if age > max_age_s:
        return True
    owner = _OWNER.match(suffix)
    if owner is None:
        # A staging folder of an older version (no owner in its name): only the age rule.
        return False
    if owner["host"] != _host():
        return False
    pid = int(owner["pid"])
    return pid != os.getpid() and not _pid_alive(pid)


def clean_stale_partials(out: Path, max_age_s: float = STALE_AFTER_S, now: float | None = None) -> list[Path]:
    """Delete staging folders an earlier export to ``out`` left behind when it was killed.

    Only hidden folders named ``.{out.name}.partial-*`` beside ``out`` are considered (and
    ``.{out.name}.old-*``, a replaced bundle moved aside, but only while ``out`` itself
    exists: otherwise it is the last copy of the previous bundle); each is removed when
    the process that made it is no longer running on this host, or it is older than
    ``max_age_s``. Symlinks and folders owned by other users are left alone. Returns what
    was removed.
    """
    parent = out.parent
    now = time.time() if now is None else now
    prefixes = [f".{out.name}.partial-"]
    if out.is_dir():
        prefixes.append(f".{out.name}.old-")
    removed: list[Path] = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        prefix = next((p for p in prefixes if entry.name.startswith(p)), None)
        if prefix is None or entry.is_symlink() or not entry.is_dir():
            continue
        try:
            if hasattr(os, "getuid") and entry.stat().st_uid != os.getuid():
                continue
        except OSError:
            continue
        if _is_stale(entry, entry.name[len(prefix):], now, max_age_s):
            shutil.rmtree(entry, ignore_errors=True)
            if not entry.exists():
                removed.append(entry)
    return removed


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
        aside = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-{_owner_tag()}", dir=out.parent))
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
    cannot be created. Staging folders of earlier exports to ``out`` that were killed are
    removed first (:func:`clean_stale_partials`).
    """
    check_destination(out)
    created = _make_parents(out.parent)
    clean_stale_partials(out)
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-{_owner_tag()}", dir=out.parent))
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

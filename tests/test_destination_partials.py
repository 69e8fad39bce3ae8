"""A SIGKILLed export leaves its ``.NAME.partial-*`` staging folder; the next export to the
same destination removes it, and only the stale ones of that destination."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from eamstcn.export.destination import _host, clean_stale_partials, staged_bundle


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _folder(path: Path, age_s: float = 0.0) -> Path:
    path.mkdir()
    (path / "key_encoder.onnx").write_bytes(b"half-written")
    if age_s:
        stamp = time.time() - age_s
        os.utime(path, (stamp, stamp))
    return path


def test_only_stale_partials_of_this_destination_are_removed(tmp_path: Path) -> None:
    out = tmp_path / "engines"
    dead = _folder(tmp_path / f".engines.partial-{_dead_pid()}@{_host()}-abc123")
    alive = _folder(tmp_path / f".engines.partial-{os.getppid()}@{_host()}-def456")  # a live process
    other_host = _folder(tmp_path / f".engines.partial-{_dead_pid()}@elsewhere-x1")
    legacy_new = _folder(tmp_path / ".engines.partial-q8w7e6")  # an older version's name: age only
    legacy_old = _folder(tmp_path / ".engines.partial-r5t4y3", age_s=2 * 24 * 3600)
    other_bundle = _folder(tmp_path / f".cameras.partial-{_dead_pid()}@{_host()}-zz")
    removed = clean_stale_partials(out)
    assert sorted(removed) == sorted([dead, legacy_old])
    for kept in (alive, other_host, legacy_new, other_bundle):
        assert kept.is_dir()


def test_an_old_bundle_moved_aside_is_kept_when_it_is_the_only_copy(tmp_path: Path) -> None:
    out = tmp_path / "engines"
    aside = _folder(tmp_path / f".engines.old-{_dead_pid()}@{_host()}-aa")
    assert clean_stale_partials(out) == [] and aside.is_dir()  # killed mid-swap: engines/ is gone
    out.mkdir()
    assert clean_stale_partials(out) == [aside]


def test_the_next_export_cleans_up_after_a_sigkilled_one(tmp_path: Path) -> None:
    out = tmp_path / "engines"
    script = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from eamstcn.export.destination import staged_bundle
        with staged_bundle(Path({str(out)!r})) as staging:
            (staging / "key_encoder.onnx").write_bytes(b"x" * 1000)
            print(staging, flush=True)
            time.sleep(600)
        """
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        staging = Path(child.stdout.readline().strip())
        assert staging.is_dir() and staging.name.startswith(".engines.partial-")
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert staging.is_dir()  # a killed process cannot clean up after itself

    with staged_bundle(out) as new_staging:
        (new_staging / "manifest.json").write_text("{}")
    assert not staging.exists()
    assert (out / "manifest.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["engines"]


@pytest.mark.skipif(not hasattr(os, "getuid") or os.getuid() != 0, reason="needs root to make a folder another user owns")
def test_folders_of_other_users_are_left_alone(tmp_path: Path) -> None:
    theirs = _folder(tmp_path / f".engines.partial-{_dead_pid()}@{_host()}-u2")
    os.chown(theirs, 4242, 4242)
    assert clean_stale_partials(tmp_path / "engines") == [] and theirs.is_dir()

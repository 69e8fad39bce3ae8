"""The console scripts, and what a command sets up in its process before it starts.

Importing the library changes nothing in the process; the commands do, here:

- ``OMP_WAIT_POLICY=PASSIVE``: idle OpenMP threads sleep instead of spinning. OpenMP reads
  it once, when torch loads it, so it must be set before anything imports torch: the
  console scripts (pyproject's ``[project.scripts]``) point at the functions below, which
  set it and only then import the command's module. Spinning workers starve every other
  thread on a small CPU: measured on 2 cores, eamstcn-run on a 36-frame clip with the
  bundled model 7.3 FPS spinning vs 20.2 passive (1.0 with --output: the writer thread
  starved); a tiny training step 2.5 s -> 25 s at load 7; ONNX Runtime bench rows at half
  speed between torch ops. ``python -m eamstcn....cli`` imports torch before any of this
  runs: set the variable yourself there (torchrun's one thread per process never spins).
- :func:`quiet_opencv`: OpenCV's and FFmpeg's own log lines off the terminal. Every
  command calls it through :func:`prepare_process` (``eamstcn.cli_errors.run_app``), in
  time for the first video it opens, whatever was imported before.

A user's own setting of any of these variables wins. Standard library only. The command
modules are named as strings, imported only when their command starts: this module is
the top of the package, above the layers (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable

#: AV_LOG_QUIET: FFmpeg prints nothing.
FFMPEG_QUIET = "-8"


def quiet_opencv() -> None:
    """Silence FFmpeg (through OpenCV) and OpenCV's logging, unless ``EAMSTCN_DEBUG`` is set.

    A damaged or truncated video makes FFmpeg print lines such as ``moov atom not found``
    straight to stderr, and OpenCV adds ``[ WARN:0@0.03] ...`` for a camera that will not
    open; our sources already say what went wrong in one line. FFmpeg reads its level
    from ``OPENCV_FFMPEG_LOGLEVEL`` when OpenCV first initialises it (the process's first
    VideoCapture or VideoWriter), OpenCV its own from ``OPENCV_LOG_LEVEL``; when cv2 is
    loaded already its level is lowered at once too, so the call order does not matter
    as long as it comes before the first video is opened.
    """
    if os.environ.get("EAMSTCN_DEBUG"):
        return
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", FFMPEG_QUIET)
    os.environ.setdefault("OPENCV_LOG_LEVEL", "OFF")
    cv2 = sys.modules.get("cv2")  # not imported here: a command that opens no video never loads it
    logging = getattr(getattr(cv2, "utils", None), "logging", None)
    if logging is not None and os.environ["OPENCV_LOG_LEVEL"] == "OFF":
        logging.setLogLevel(logging.LOG_LEVEL_SILENT)


def prepare_process() -> None:
    """What every command sets in its process (idempotent; see the module docstring)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # in effect only before torch loads
    quiet_opencv()


def _command(module: str) -> Callable[[], None]:
    def main() -> None:
        prepare_process()
        importlib.import_module(module).main()

    main.__doc__ = f"Console script: :func:`{module}.main` in a prepared process."
    return main


train = _command("eamstcn.training.cli")
evaluate = _command("eamstcn.runtime.eval_cli")
synth = _command("eamstcn.data.synth_cli")
export = _command("eamstcn.export.cli")
run = _command("eamstcn.runtime.cli")
bench = _command("eamstcn.bench.cli")

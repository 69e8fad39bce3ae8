"""Keep OpenCV's and FFmpeg's own log lines off the user's terminal.

A damaged or truncated video makes FFmpeg print lines such as ``moov atom not found`` or
``Error at MB: 15`` straight to stderr, and OpenCV adds ``[ WARN:0@0.03] ...`` lines for a
camera that will not open. Our sources already say what went wrong in one line (a video
that does not open, a stream that ended early at frame N), so these are noise.

FFmpeg's level is read once, when OpenCV first initialises FFmpeg (the first
VideoCapture or VideoWriter of the process), from ``OPENCV_FFMPEG_LOGLEVEL``; OpenCV's
own level from ``OPENCV_LOG_LEVEL``. Importing this module sets both (only where the
user has not set them, and not with ``EAMSTCN_DEBUG`` set) and lowers OpenCV's level at
once in case cv2 was imported already. Import it before ``cv2`` in every runtime module
that captures or writes video.
"""

from __future__ import annotations

import os

#: AV_LOG_QUIET: FFmpeg prints nothing.
FFMPEG_QUIET = "-8"


def quiet() -> None:
    """Silence FFmpeg (through OpenCV) and OpenCV's logging, unless debugging."""
    if os.environ.get("EAMSTCN_DEBUG"):
        return
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", FFMPEG_QUIET)
    os.environ.setdefault("OPENCV_LOG_LEVEL", "OFF")
    import cv2

    logging = getattr(getattr(cv2, "utils", None), "logging", None)
    if logging is not None and os.environ["OPENCV_LOG_LEVEL"] == "OFF":
        logging.setLogLevel(logging.LOG_LEVEL_SILENT)


quiet()

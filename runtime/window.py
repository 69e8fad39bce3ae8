"""The ``--show`` window where the user marks objects with boxes.

Two layers, so the logic is testable without a display:

- :class:`BoxPicker`, a small state machine fed events (mouse down/move/up, keys) that
  returns :class:`Request` objects; it knows nothing of OpenCV;
- :class:`Window`, the OpenCV shell: it turns window callbacks and ``waitKey`` into
  events, draws, and writes snapshots.

Keys: while marking, drag boxes (several allowed), Backspace drops the last one, a digit
1-9 picks the object a box redraws (default: a new object), Enter starts (or resumes),
Esc quits (or, when paused, resumes without change). While tracking: ``b`` pauses to add
or redraw an object, ``r`` restarts from new boxes, ``s`` writes a snapshot, Esc/``q`` quits.
"""

from __future__ import annotations

import enum
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from eamstcn.notices import notice
from eamstcn.runtime.prompts import MIN_SIDE, Box

ENTER_KEYS = (10, 13)
ESC = 27
BACKSPACE_KEYS = (8, 127)


class Mode(enum.Enum):
    MARK = "mark"  # the frame is frozen; boxes are being drawn
    TRACK = "track"
    QUIT = "quit"


@dataclass(frozen=True)
class Event:
    """``kind``: "down", "move", "up" (x, y in frame pixels) or "key" (``key`` code)."""

    kind: str
    x: int = 0
    y: int = 0
    key: int = -1


@dataclass(frozen=True)
class Request:
    """What the user asked for. ``kind``: "start" (first boxes), "add" (boxes for new
    objects, or for ``target`` when redrawing one), "restart" (forget every object, start
    from these boxes), "snapshot", or "quit"."""

    kind: str
    boxes: tuple[Box, ...] = ()
    target: int | None = None


@dataclass
class BoxPicker:
    """State machine of the window. Starts marking the first frame."""

    frame_size: tuple[int, int]  # (H, W): boxes are clipped to it
    mode: Mode = Mode.MARK
    purpose: str = "start"  # what Enter turns the boxes into: start / add / restart
    boxes: list[Box] = field(default_factory=list)
    drag: tuple[int, int, int, int] | None = None  # x0, y0, x1, y1 while the button is down
    target: int | None = None

    def feed(self, event: Event) -> Request | None:
        if self.mode is Mode.QUIT:
            return None
        if event.kind == "key":
            return self._key(event.key)
        if self.mode is not Mode.MARK:
            return None
        x = min(max(event.x, 0), self.frame_size[1] - 1)
        y = min(max(event.y, 0), self.frame_size[0] - 1)
        if event.kind == "down":
            self.drag = (x, y, x, y)
        elif event.kind == "move" and self.drag is not None:
            self.drag = (*self.drag[:2], x, y)
        elif event.kind == "up" and self.drag is not None:
            x0, y0 = self.drag[:2]
            self.drag = None
            box = (min(x0, x), min(y0, y), abs(x - x0) + 1, abs(y - y0) + 1)
            if box[2] >= MIN_SIDE and box[3] >= MIN_SIDE:  # a click is not a box
                self.boxes = [box] if self.target is not None else [*self.boxes, box]
        return None

    def _key(self, key: int) -> Request | None:
        char = chr(key) if 0 <= key < 128 else ""
        if self.mode is Mode.TRACK:
            if key == ESC or char == "q":
                self.mode = Mode.QUIT
                return Request("quit")
            if char == "s":
                return Request("snapshot")
            if char in ("b", "r"):
                self._mark("add" if char == "b" else "restart")
            return None
        # marking
        if char == "s":
            return Request("snapshot")
        if key in ENTER_KEYS:
            if not self.boxes:
                if self.purpose == "add":  # nothing drawn: just resume
                    self.mode = Mode.TRACK
                return None
            request = Request(self.purpose, tuple(self.boxes), self.target)
            self._track()
            return request
        if key == ESC:
            if self.purpose == "start":
                self.mode = Mode.QUIT
                return Request("quit")
            self._track()  # a pause or a restart cancelled: carry on as before
            return None
        if key in BACKSPACE_KEYS and self.boxes:
            self.boxes.pop()
        elif self.purpose == "add" and char.isdigit() and char != "0":
            self.target = int(char)
            self.boxes = self.boxes[-1:]  # one object is redrawn with one box
        return None

    def _mark(self, purpose: str) -> None:
        self.mode, self.purpose, self.boxes, self.drag, self.target = Mode.MARK, purpose, [], None, None

    def _track(self) -> None:
        self.mode, self.boxes, self.drag, self.target = Mode.TRACK, [], None, None


class WindowError(ValueError):
    """No window can be opened here; one line meant for the user."""


def gui_missing_reason() -> str | None:
    """Why no window can open here, or None when one can."""
    if sys.platform not in ("win32", "darwin") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return "there is no display here (DISPLAY is not set)"
    if "NONE" in _gui_backend():
        return "this OpenCV has no GUI (opencv-python-headless; install the gui extra: pip install \".[cpu,gui]\")"
    return None


def _gui_backend() -> str:
    info = cv2.getBuildInformation()
    start = info.find("GUI:")
    return info[start:start + 40].splitlines()[0] if start >= 0 else "NONE"


_HELP = {
    "start": "drag a box around each object, Enter: start, Backspace: undo, Esc: quit",
    "add": "drag a box (digit 1-9 first: redraw that object), Enter: resume, Esc: cancel",
    "restart": "drag new boxes, Enter: restart tracking from them, Esc: cancel",
}


class Window:
    """The OpenCV shell around :class:`BoxPicker`. ``select`` blocks on a frozen frame;
    ``show`` draws one tracked frame and handles b / r / s / Esc. Requests for the run
    (add, restart) wait in :meth:`take_request`."""

    def __init__(self, snapshot_dir: Path, title: str = "eamstcn", notify: Callable[[str], None] | None = None,
                 draw: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None) -> None:
        reason = gui_missing_reason()
        if reason is not None:
            raise WindowError(f"--show without --mask or --box opens a window to draw boxes, but {reason}: pass --box X,Y,W,H")
        self.title = title
        self.snapshot_dir = snapshot_dir
        self._notify = notify or notice
        self._draw = draw
        self._events: list[Event] = []
        self._picker: BoxPicker | None = None
        self._pending: Request | None = None
        self._frames_shown = 0
        cv2.namedWindow(title, cv2.WINDOW_AUTOSIZE)
        cv2.setMouseCallback(title, self._on_mouse)

    def _on_mouse(self, action: int, x: int, y: int, flags: int, _param: object) -> None:
        kind = {cv2.EVENT_LBUTTONDOWN: "down", cv2.EVENT_MOUSEMOVE: "move", cv2.EVENT_LBUTTONUP: "up"}.get(action)
        if kind is not None:
            self._events.append(Event(kind, x, y))

    def _poll(self, wait_ms: int) -> list[Event]:
        key = cv2.waitKeyEx(wait_ms)
        events, self._events = self._events, []
        if key != -1:
            events.append(Event("key", key=key & 0xFF))
        return events

    def select(self, frame: np.ndarray, purpose: str = "start", labels: np.ndarray | None = None) -> Request:
        """Freeze ``frame`` (H, W, 3) RGB until the user confirms boxes or leaves."""
        picker = self._picker or BoxPicker(frame.shape[:2])
        picker.frame_size = frame.shape[:2]
        picker._mark(purpose)
        self._picker = picker
        while True:
            self._render(frame, labels, picker)
            for event in self._poll(20):
                request = picker.feed(event)
                if request is not None and request.kind == "snapshot":
                    self.snapshot(frame)
                elif request is not None:
                    return request
            if picker.mode is Mode.TRACK:  # a pause resumed without boxes
                return Request("resume")

    def show(self, frame: np.ndarray, labels: np.ndarray) -> bool:
        """Show one tracked frame; False once the user quits."""
        picker = self._picker or BoxPicker(frame.shape[:2], mode=Mode.TRACK)
        self._picker = picker
        self._frames_shown += 1
        self._render(frame, labels, picker)
        for event in self._poll(1):
            request = picker.feed(event)
            if request is None and picker.mode is Mode.MARK:  # b or r: freeze this frame
                request = self.select(frame, picker.purpose, labels)
            if request is None:
                continue
            if request.kind == "quit":
                return False
            if request.kind == "snapshot":
                self.snapshot(frame)
            elif request.kind in ("add", "restart"):
                self._pending = request
        return True

    def take_request(self) -> Request | None:
        request, self._pending = self._pending, None
        return request

    def snapshot(self, frame: np.ndarray) -> Path:
        from eamstcn.data.davis_io import write_frame

        path = self.snapshot_dir / f"snapshot-{self._frames_shown:05d}.jpg"
        self.snapshot_dir.mkdir(parents=True, exist_ok=True)
        write_frame(path, frame)
        self._notify(f"snapshot written: {path}")
        return path

    def _render(self, frame: np.ndarray, labels: np.ndarray | None, picker: BoxPicker) -> None:
        image = frame if labels is None or self._draw is None else self._draw(frame, labels)
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
        if picker.mode is Mode.MARK:
            for x, y, w, h in picker.boxes:
                cv2.rectangle(image, (x, y), (x + w - 1, y + h - 1), (0, 255, 0), 2)
            if picker.drag is not None:
                x0, y0, x1, y1 = picker.drag
                cv2.rectangle(image, (x0, y0), (x1, y1), (0, 200, 255), 1)
            text = _HELP[picker.purpose] + (f" (redrawing object {picker.target})" if picker.target else "")
            cv2.putText(image, text, (6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
        cv2.imshow(self.title, image)

    def close(self) -> None:
        try:
            cv2.destroyWindow(self.title)
        except cv2.error:
            pass

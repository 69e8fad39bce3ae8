"""The --show window's state machine, fed scripted events as a real window would feed them;
and the OpenCV shell under Xvfb where both Xvfb and the gui OpenCV exist."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import numpy as np
import pytest

from eamstcn.runtime.window import ENTER_KEYS, ESC, BoxPicker, Event, Mode, Request, gui_missing_reason

ENTER = ENTER_KEYS[1]


def drag(x0: int, y0: int, x1: int, y1: int) -> list[Event]:
    return [Event("down", x0, y0), Event("move", (x0 + x1) // 2, (y0 + y1) // 2), Event("move", x1, y1), Event("up", x1, y1)]


def key(char: str | int) -> Event:
    return Event("key", key=ord(char) if isinstance(char, str) else char)


def feed(picker: BoxPicker, events: list[Event]) -> list[Request]:
    return [r for r in (picker.feed(e) for e in events) if r is not None]


def test_drag_two_boxes_then_enter_starts() -> None:
    picker = BoxPicker((96, 128))
    requests = feed(picker, [*drag(10, 10, 40, 50), *drag(60, 5, 70, 20), key(ENTER)])
    assert requests == [Request("start", ((10, 10, 31, 41), (60, 5, 11, 16)))]
    assert picker.mode is Mode.TRACK


def test_dragging_up_left_clipping_undo_and_clicks() -> None:
    picker = BoxPicker((96, 128))
    feed(picker, [*drag(50, 50, -5, 200), *drag(3, 3, 4, 4)])  # clipped to the frame; a click is not a box
    assert picker.boxes == [(0, 50, 51, 46)]
    feed(picker, [key(8), key(ENTER)])  # Backspace drops it; Enter with nothing does not start
    assert picker.boxes == [] and picker.mode is Mode.MARK


def test_esc_on_the_first_frame_quits() -> None:
    picker = BoxPicker((96, 128))
    assert feed(picker, [*drag(10, 10, 40, 50), key(ESC)]) == [Request("quit")]
    assert picker.mode is Mode.QUIT and feed(picker, [key(ENTER)]) == []


def test_while_tracking_b_adds_r_restarts_s_snapshots_q_quits() -> None:
    picker = BoxPicker((96, 128))
    feed(picker, [*drag(10, 10, 40, 50), key(ENTER)])
    assert feed(picker, [key("s")]) == [Request("snapshot")] and picker.mode is Mode.TRACK
    assert feed(picker, [*drag(0, 0, 30, 30)]) == [] and picker.boxes == []  # mouse ignored while tracking
    assert feed(picker, [key("b"), *drag(70, 10, 90, 30), key(ENTER)]) == [Request("add", ((70, 10, 21, 21),))]
    assert feed(picker, [key("b"), key("2"), *drag(5, 5, 20, 20), *drag(6, 6, 30, 30), key(ENTER)]) == [
        Request("add", ((6, 6, 25, 25),), target=2)]  # redrawing object 2: the last box wins
    assert feed(picker, [key("b"), *drag(5, 5, 20, 20), key(ESC)]) == [] and picker.mode is Mode.TRACK  # cancelled
    assert feed(picker, [key("b"), key(ENTER)]) == [] and picker.mode is Mode.TRACK  # nothing drawn: resume
    assert feed(picker, [key("r"), *drag(1, 1, 50, 50), key(ENTER)]) == [Request("restart", ((1, 1, 50, 50),))]
    assert feed(picker, [key("q")]) == [Request("quit")] and picker.mode is Mode.QUIT


def test_no_display_is_one_line_naming_box(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    from eamstcn.runtime.window import Window, WindowError

    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setattr("sys.platform", "linux")
    with pytest.raises(WindowError, match="no display here.*--box X,Y,W,H"):
        Window(tmp_path)


@pytest.fixture
def xvfb_display(monkeypatch: pytest.MonkeyPatch):
    if shutil.which("Xvfb") is None:
        pytest.skip("Xvfb is not installed")
    os.environ.setdefault("DISPLAY", ":0")  # the gui check below needs some value
    from eamstcn.runtime.window import _gui_backend

    if "NONE" in _gui_backend():
        pytest.skip("this OpenCV has no GUI (headless build)")
    display = ":97"
    server = subprocess.Popen(["Xvfb", display, "-screen", "0", "320x240x24"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    monkeypatch.setenv("DISPLAY", display)
    yield display
    server.terminate()
    server.wait(timeout=5)


def test_window_under_xvfb(xvfb_display, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real shell: scripted events through its queue, keys through a patched waitKeyEx."""
    from eamstcn.runtime import window as window_module

    assert gui_missing_reason() is None
    keys = iter([-1, ENTER, ord("s"), ord("b"), ENTER, ord("q")])
    monkeypatch.setattr(window_module.cv2, "waitKeyEx", lambda ms: next(keys, -1))
    frame = np.zeros((64, 96, 3), np.uint8)
    shell = window_module.Window(tmp_path)
    shell._events += drag(10, 10, 40, 40)  # what the mouse callback queues
    assert shell.select(frame) == Request("start", ((10, 10, 31, 31),))
    labels = np.zeros((64, 96), np.uint8)
    assert shell.show(frame, labels) is True and list(tmp_path.glob("snapshot-*.jpg"))  # s
    assert shell.show(frame, labels) is True and shell.take_request() is None  # b, then Enter with no box: resume
    assert shell.show(frame, labels) is False  # q
    shell.close()

"""``eamstcn-run`` from boxes and clicks instead of a mask file, ``--add-box``, ``--snapshot``,
and the one-line refusals around them."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from eamstcn.data.davis_io import read_frame, read_mask, write_frame
from tests.helpers.assets import RuntimeAssets
from tests.helpers.cli import assert_one_line_error, invoke

FRAMES = 8


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    from eamstcn.data.synth import generate_sequence

    clip = generate_sequence(seed=3, frames=FRAMES, height=64, width=96, objects=2)
    folder = tmp_path_factory.mktemp("prompt-clip") / "frames"
    for t, frame in enumerate(clip.frames):
        write_frame(folder / f"{t:05d}.png", frame)
    return folder, clip


def bounding_box(mask: np.ndarray) -> str:
    ys, xs = np.nonzero(mask)
    return f"{xs.min()},{ys.min()},{xs.max() - xs.min() + 1},{ys.max() - ys.min() + 1}"


def test_boxes_write_first_mask_and_track(runtime_assets: RuntimeAssets, clip_folder, tmp_path: Path) -> None:
    folder, clip = clip_folder
    first = clip.masks[0]
    out = tmp_path / "out"
    result = invoke("--frames", folder, "--box", bounding_box(first == 1), "--box", bounding_box(first == 2),
                    "--add-box", f"4:{bounding_box(clip.masks[4] == 1)}:1", "--engines", runtime_assets.engines, "--output", out)
    assert result.exit_code == 0, result.output
    derived = read_mask(out / "first-mask.png")
    assert Image.open(out / "first-mask.png").mode == "P"
    assert set(np.unique(derived)) == {0, 1, 2}
    for object_id in (1, 2):
        truth, mask = first == object_id, derived == object_id
        assert (truth & mask).sum() / (truth | mask).sum() > 0.5
    assert np.array_equal(read_mask(out / "masks/00000.png"), derived)  # frame 0 is the derived mask
    rows = list(csv.DictReader(open(out / "stats.csv")))
    assert len(rows) == FRAMES and "lost" in rows[0]
    assert "first-mask.png" in result.stderr


def test_snapshot_writes_the_first_frame_and_exits(clip_folder, tmp_path: Path) -> None:
    folder, clip = clip_folder
    result = invoke("--frames", folder, "--snapshot", tmp_path / "first.png")
    assert result.exit_code == 0, result.output
    assert np.array_equal(read_frame(tmp_path / "first.png"), clip.frames[0])
    assert_one_line_error(invoke("--frames", folder, "--snapshot", tmp_path / "first.gif"), "give a .jpg or .png")
    assert_one_line_error(invoke("--frames", folder, "--snapshot", tmp_path / "no/first.jpg"), "existing folder")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--box", "1,2,3"), "--box takes X,Y,W,H"),
        (("--box", "50,10,60,20"), "extends past the 96x64 frame"),
        (("--point", "10,100"), "outside the 96x64 frame"),
        (("--add-box", "3:1,1"), "--add-box takes X,Y,W,H"),
        (("--box", "1,1,20,20", "--add-box", "0:1,1,20,20"), "--add-box frame must be >= 1"),
        ((), "--mask, --box or --point is required"),
    ],
)
def test_prompt_refusals(runtime_assets: RuntimeAssets, clip_folder, tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    folder, _ = clip_folder
    out = tmp_path / "out"
    assert_one_line_error(invoke("--frames", folder, *args, "--engines", runtime_assets.engines, "--output", out), message)
    assert not out.exists()


def test_mask_and_box_together_refused(runtime_assets: RuntimeAssets, clip_folder, tmp_path: Path) -> None:
    folder, clip = clip_folder
    from tests.helpers.assets import write_mask

    mask = write_mask(tmp_path / "m.png", clip.masks[0])
    assert_one_line_error(invoke("--frames", folder, "--mask", mask, "--box", "1,1,20,20", "--engines", runtime_assets.engines),
                          "one way")


def test_show_without_display_says_box_is_the_way(runtime_assets: RuntimeAssets, clip_folder, monkeypatch: pytest.MonkeyPatch) -> None:
    folder, _ = clip_folder
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert_one_line_error(invoke("--frames", folder, "--show", "--engines", runtime_assets.engines), "pass --box X,Y,W,H")


@pytest.mark.parametrize("args", [("--box", "1,1,10,10"), ("--point", "5,5"), ("--add-box", "3:1,1,10,10")])
def test_demo_refuses_prompts(tmp_path: Path, args: tuple[str, ...]) -> None:
    """--demo brings its own first mask: a prompt beside it is a mistake, refused before
    anything is generated."""
    result = invoke("--demo", *args, "--output", tmp_path / "demo")
    assert_one_line_error(result, "--demo brings its own clip and first mask")
    assert not (tmp_path / "demo").exists()

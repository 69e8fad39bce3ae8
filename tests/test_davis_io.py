"""DAVIS-layout IO: palette PNGs, mask decoding rules, sequence round trips."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from eamstcn.data.davis_io import (
    DAVIS_PALETTE,
    MaskError,
    annotation_paths,
    frame_paths,
    list_sequences,
    load_sequence,
    read_mask,
    write_indexed_png,
    write_sequence,
)


def _ids(height: int = 64, width: int = 96, objects: int = 3) -> np.ndarray:
    """Object ids (H, W) uint8: a few rectangles on background."""
    labels = np.zeros((height, width), dtype=np.uint8)
    for k in range(1, objects + 1):
        labels[4 * k : 4 * k + 20, 10 * k : 10 * k + 25] = k
    return labels


def _smooth_frames(count: int, height: int = 64, width: int = 96) -> np.ndarray:
    """Smooth RGB frames (T, H, W, 3) uint8 that survive JPEG with small error."""
    ys, xs = np.mgrid[0:height, 0:width]
    frames = [
        np.stack([xs * 2 + t * 5, ys * 3, np.full_like(xs, 90 + 10 * t)], axis=-1)
        for t in range(count)
    ]
    return np.clip(np.stack(frames), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- palette


def test_palette_is_the_voc_davis_palette() -> None:
    assert DAVIS_PALETTE.shape == (256, 3) and DAVIS_PALETTE.dtype == np.uint8
    expected = [(0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0), (0, 0, 128),
                (128, 0, 128), (0, 128, 128), (128, 128, 128), (64, 0, 0)]
    assert [tuple(c) for c in DAVIS_PALETTE[:9].tolist()] == expected
    assert tuple(DAVIS_PALETTE[255].tolist()) == (224, 224, 192)
    assert len({tuple(c) for c in DAVIS_PALETTE.tolist()}) == 256
    assert not DAVIS_PALETTE.flags.writeable


def test_indexed_png_round_trip(tmp_path: Path) -> None:
    labels = _ids()
    path = tmp_path / "sub" / "00000.png"
    write_indexed_png(path, labels)
    with Image.open(path) as image:
        assert image.mode == "P"
        assert image.getpalette()[:12] == DAVIS_PALETTE[:4].ravel().tolist()
    np.testing.assert_array_equal(read_mask(path), labels)
    assert [p.name for p in path.parent.iterdir()] == ["00000.png"]  # no temp file left


def test_write_indexed_png_rejects_bad_labels(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="2-D"):
        write_indexed_png(tmp_path / "a.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="0..255"):
        write_indexed_png(tmp_path / "b.png", np.full((4, 4), 300, np.int32))
    with pytest.raises(ValueError, match="integer"):
        write_indexed_png(tmp_path / "c.png", np.zeros((4, 4), np.float32))
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- read_mask


def test_binary_0_255_mask_reads_as_object_1(tmp_path: Path) -> None:
    binary = (_ids(objects=1) > 0).astype(np.uint8)
    Image.fromarray(binary * 255).save(tmp_path / "gray.png")  # mode "L", DAVIS-2016
    Image.fromarray(binary * 255).convert("1").save(tmp_path / "bilevel.png")
    for name in ("gray.png", "bilevel.png"):
        mask = read_mask(tmp_path / name)
        assert mask.dtype == np.uint8
        np.testing.assert_array_equal(mask, binary)


def test_palette_mask_with_only_255_is_binary(tmp_path: Path) -> None:
    binary = (_ids(objects=1) > 0).astype(np.uint8)
    write_indexed_png(tmp_path / "m.png", binary * 255)
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png"), binary)


def test_several_gray_levels_rank_in_increasing_order(tmp_path: Path) -> None:
    levels = np.array([0, 200, 50, 120], dtype=np.uint8)
    Image.fromarray(levels[_ids()]).save(tmp_path / "g.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "g.png"), np.array([0, 3, 1, 2])[_ids()])


def test_rgb_mask_with_palette_colours_keeps_palette_ids(tmp_path: Path) -> None:
    ids = np.array([0, 5, 2, 7], dtype=np.uint8)[_ids()]
    Image.fromarray(DAVIS_PALETTE[ids]).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "rgb.png"), ids)


def test_rgb_mask_with_other_colours_numbers_by_first_appearance(tmp_path: Path) -> None:
    rgb = np.zeros((40, 50, 3), dtype=np.uint8)
    rgb[20:30, 0:10] = (255, 255, 255)  # appears second (lower rows)
    rgb[2:8, 30:40] = (250, 0, 250)  # appears first
    rgb[35:38, 5:9] = (10, 200, 30)  # appears third
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    mask = read_mask(tmp_path / "rgb.png")
    assert mask[3, 35] == 1 and mask[25, 5] == 2 and mask[36, 6] == 3 and mask[0, 0] == 0
    # RGBA: fully transparent pixels are background whatever their colour.
    rgba = np.dstack([rgb, np.full((40, 50), 255, np.uint8)])
    rgba[35:38, 5:9, 3] = 0
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    assert set(np.unique(read_mask(tmp_path / "rgba.png")).tolist()) == {0, 1, 2}


@pytest.mark.parametrize("content", [None, b"not a png at all", b"\x89PNG\r\n\x1a\n\x00\x00"])
def test_unreadable_mask_raises_mask_error(tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "bad.png"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(MaskError) as info:
        read_mask(path)
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    assert "bad.png" in message and "\n" not in message


# --------------------------------------------------------------------------- sequences


def test_write_and_load_sequence_round_trip(tmp_path: Path) -> None:
    frames = _smooth_frames(4)
    masks = np.stack([np.roll(_ids(), t, axis=1) for t in range(4)])
    write_sequence(tmp_path, "b", frames, masks)
    write_sequence(tmp_path, "a", frames[:2], masks[:2])
    assert list_sequences(tmp_path) == ["a", "b"]
    assert [p.name for p in frame_paths(tmp_path, "b")] == [f"{t:05d}.jpg" for t in range(4)]
    assert [p.name for p in annotation_paths(tmp_path, "b")] == [f"{t:05d}.png" for t in range(4)]
    loaded_frames, loaded_masks = load_sequence(tmp_path, "b")
    assert loaded_frames.shape == frames.shape and loaded_frames.dtype == np.uint8
    assert np.abs(loaded_frames.astype(int) - frames).mean() < 3  # JPEG quality 95
    np.testing.assert_array_equal(np.stack(loaded_masks), masks)


def test_load_sequence_with_only_first_frame_annotated(tmp_path: Path) -> None:
    frames = _smooth_frames(3)
    write_sequence(tmp_path, "s", frames, [_ids(), None, None])
    _, masks = load_sequence(tmp_path, "s")
    assert masks[0] is not None and masks[1] is None and masks[2] is None
    np.testing.assert_array_equal(masks[0], _ids())


def test_davis2016_layout_with_png_frames_and_binary_masks(tmp_path: Path) -> None:
    frames = _smooth_frames(2)
    binary = (_ids(objects=1) > 0).astype(np.uint8)
    for t in range(2):
        frame_dir = tmp_path / "JPEGImages" / "480p" / "bear"
        mask_dir = tmp_path / "Annotations" / "480p" / "bear"
        frame_dir.mkdir(parents=True, exist_ok=True)
        mask_dir.mkdir(parents=True, exist_ok=True)
        Image.fromarray(frames[t]).save(frame_dir / f"{t:05d}.png")
        Image.fromarray(binary * 255).save(mask_dir / f"{t:05d}.png")
    loaded_frames, masks = load_sequence(tmp_path, "bear")
    np.testing.assert_array_equal(loaded_frames, frames)  # PNG frames are lossless
    np.testing.assert_array_equal(np.stack(masks), np.stack([binary, binary]))


def test_layout_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="JPEGImages"):
        list_sequences(tmp_path)
    write_sequence(tmp_path, "s", _smooth_frames(1), None)
    with pytest.raises(FileNotFoundError, match="'missing'"):
        load_sequence(tmp_path, "missing")
    write_indexed_png(tmp_path / "Annotations" / "480p" / "s" / "00000.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(MaskError, match="8x8"):
        load_sequence(tmp_path, "s")


def test_davis_io_imports_neither_torch_nor_cv2() -> None:
    code = (
        "import sys, eamstcn.data.davis_io; "
        "bad = [m for m in ('torch', 'cv2') if m in sys.modules]; "
        "sys.exit(f'imported {bad}' if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr

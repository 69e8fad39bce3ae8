"""Masks people make for ``eamstcn-run``: whether a file names its ids (palette) or only
ranks them (grey levels, binary, arbitrary colours), and lossy or anti-aliased masks
refused in one line instead of read as dozens of objects."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from eamstcn.data.davis_io import DAVIS_PALETTE, MaskError, read_mask, read_user_mask, write_indexed_png


def _disc(size: tuple[int, int] = (96, 128), scale: int = 1) -> np.ndarray:
    mask = np.zeros((size[0] * scale, size[1] * scale), np.uint8)
    cv2.circle(mask, (60 * scale, 48 * scale), 30 * scale, 255, -1)
    return mask


def test_palette_names_its_ids(tmp_path: Path) -> None:
    ids = np.zeros((8, 8), np.uint8)
    ids[:4, :4], ids[4:, 4:] = 2, 5
    write_indexed_png(tmp_path / "p.png", ids)
    mask = read_user_mask(tmp_path / "p.png")
    assert mask.explicit_ids and np.array_equal(mask.ids, ids)


def test_grey_binary_and_free_colours_only_rank(tmp_path: Path) -> None:
    Image.fromarray(_disc()).save(tmp_path / "binary.png")
    grey = np.zeros((8, 8), np.uint8)
    grey[:4], grey[4:] = 100, 200
    Image.fromarray(grey).save(tmp_path / "grey.png")
    colours = np.zeros((8, 8, 3), np.uint8)
    colours[:4] = (10, 200, 30)
    Image.fromarray(colours).save(tmp_path / "colour.png")
    for name, objects in (("binary.png", 1), ("grey.png", 2), ("colour.png", 1)):
        mask = read_user_mask(tmp_path / name)
        assert not mask.explicit_ids, name
        assert int(mask.ids.max()) == objects, name


def test_rgb_render_of_palette_colours_names_ids(tmp_path: Path) -> None:
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[:4] = DAVIS_PALETTE[3]
    Image.fromarray(rgb).save(tmp_path / "render.png")
    mask = read_user_mask(tmp_path / "render.png")
    assert mask.explicit_ids and set(np.unique(mask.ids)) == {0, 3}


def test_binary_mask_saved_as_jpeg(tmp_path: Path) -> None:
    Image.fromarray(_disc()).save(tmp_path / "mask.jpg", quality=90)
    assert len(np.unique(read_mask(tmp_path / "mask.jpg"))) > 5  # what read_mask alone makes of it
    with pytest.raises(MaskError, match=r"is a JPEG/WebP: lossy compression turned its objects into \d+ grey levels") as info:
        read_user_mask(tmp_path / "mask.jpg")
    assert "save it as a PNG" in str(info.value) and "\n" not in str(info.value)


def test_colour_mask_saved_as_jpeg(tmp_path: Path) -> None:
    rgb = np.zeros((96, 128, 3), np.uint8)
    rgb[_disc() > 0] = (200, 40, 40)
    Image.fromarray(rgb).save(tmp_path / "mask.jpg", quality=85)
    with pytest.raises(MaskError, match="colours"):
        read_user_mask(tmp_path / "mask.jpg")


def test_anti_aliased_png(tmp_path: Path) -> None:
    smooth = cv2.resize(_disc(scale=4), (128, 96), interpolation=cv2.INTER_AREA)  # soft edge levels
    Image.fromarray(smooth).save(tmp_path / "aa.png")
    with pytest.raises(MaskError, match="anti-aliased or lossy edges"):
        read_user_mask(tmp_path / "aa.png")


def test_grey_id_masks_with_a_small_object_are_not_lossy(tmp_path: Path) -> None:
    grey = np.zeros((100, 100), np.uint8)
    grey[:40], grey[50:90], grey[95, :30] = 1, 2, 3  # object 3: 30 of 8,030 object pixels (0.4%)
    Image.fromarray(grey).save(tmp_path / "ids.png")
    assert int(read_user_mask(tmp_path / "ids.png").ids.max()) == 3


def test_a_jpeg_of_one_flat_object_is_fine(tmp_path: Path) -> None:
    flat = np.full((16, 16), 255, np.uint8)
    Image.fromarray(flat).save(tmp_path / "flat.jpg", quality=100)
    assert read_user_mask(tmp_path / "flat.jpg").ids.max() == 1

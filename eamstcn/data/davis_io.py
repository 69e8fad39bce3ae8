"""DAVIS-layout dataset IO: palette PNG masks, frame folders, whole sequences.

Only the standard library, numpy and Pillow are imported here: the lean runtime uses
:func:`read_mask` to read the user's first-frame mask and must not pull in torch or cv2.

Layout (DAVIS-2016 and DAVIS-2017 share it)::

    root/JPEGImages/<resolution>/<sequence>/00000.jpg   frames (.jpg, .jpeg or .png)
    root/Annotations/<resolution>/<sequence>/00000.png  masks, same stem as the frame

DAVIS-2017 masks are palette ("P") PNGs whose pixel values are object ids (0 is
background); DAVIS-2016 masks are grayscale PNGs holding 0/255 (one object).
:func:`read_mask` turns both, and RGB colour-coded masks, into ids 0..K.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from eamstcn.fileio import atomic_target

__all__ = [
    "DAVIS_PALETTE",
    "FRAME_EXTENSIONS",
    "MaskError",
    "MaskFile",
    "annotation_paths",
    "frame_paths",
    "list_sequences",
    "load_sequence",
    "read_frame",
    "read_mask",
    "read_user_mask",
    "write_frame",
    "write_indexed_png",
    "write_sequence",
]

FRAME_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png")
"""Frame file extensions recognised in ``JPEGImages`` (compared case-insensitively)."""

StrPath = str | os.PathLike[str]


class MaskError(ValueError):
    """A mask file cannot be read or cannot be turned into object ids."""


def _make_davis_palette() -> np.ndarray:
    """The PASCAL VOC / DAVIS palette: (256, 3) uint8, colour of each object id.

    The 8 bits of the index are dealt out round-robin to R, G, B, most significant
    colour bit first, so that low ids get far-apart colours (1 dark red, 2 dark green...).
    """
    palette = np.zeros((256, 3), dtype=np.uint8)
    for index in range(256):
        code, colour = index, [0, 0, 0]
        for bit in range(7, -1, -1):  # bit 7 of each channel takes the index's lowest bits
            for channel in range(3):
                colour[channel] |= ((code >> channel) & 1) << bit
            code >>= 3
        palette[index] = colour
    palette.flags.writeable = False
    return palette


DAVIS_PALETTE: np.ndarray = _make_davis_palette()
"""(256, 3) uint8, read-only: id 0 black, 1 (128,0,0), 2 (0,128,0), 3 (128,128,0), 4 (0,0,128)..."""

# Packed 0xRRGGBB -> palette index, for recognising palette colours in RGB masks.
_PALETTE_INDEX_OF_COLOUR: dict[int, int] = {
    (int(r) << 16) | (int(g) << 8) | int(b): i for i, (r, g, b) in enumerate(DAVIS_PALETTE)
}


# --------------------------------------------------------------------------- writing


def _as_label_image(labels: np.ndarray) -> np.ndarray:
    """Validate ids (H, W) in 0..255 and return them as C-contiguous uint8."""
    array = np.asarray(labels)
    if array.ndim != 2:
        raise ValueError(f"labels must be 2-D (H, W), got shape {array.shape}")
    if array.dtype != np.uint8:
        if array.dtype.kind not in "biu":
            raise ValueError(f"labels must be integer object ids, got dtype {array.dtype}")
        if array.size and (array.min() < 0 or array.max() > 255):
            raise ValueError("labels must lie in 0..255 to fit a palette PNG")
        array = array.astype(np.uint8)
    return np.ascontiguousarray(array)


def write_indexed_png(path: StrPath, labels: np.ndarray) -> None:
    """Write object ids (H, W) uint8 as a palette ("P") PNG with :data:`DAVIS_PALETTE`.

    Written atomically (:func:`eamstcn.fileio.atomic_target`); parent folders are created.
    """
    array = _as_label_image(labels)
    height, width = array.shape
    image = Image.frombytes("P", (width, height), array.tobytes())
    image.putpalette(DAVIS_PALETTE.tobytes())
    with atomic_target(path) as tmp:
        image.save(tmp, format="PNG")


def write_frame(path: StrPath, frame: np.ndarray, quality: int = 95) -> None:
    """Write an RGB frame (H, W, 3) uint8 atomically; JPEG for .jpg/.jpeg, else PNG."""
    array = np.asarray(frame)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ValueError(f"frame must be (H, W, 3) uint8, got {array.shape} {array.dtype}")
    image = Image.fromarray(np.ascontiguousarray(array))
    is_jpeg = Path(path).suffix.lower() in (".jpg", ".jpeg")
    with atomic_target(path) as tmp:
        if is_jpeg:
            image.save(tmp, format="JPEG", quality=quality)
        else:
            image.save(tmp, format="PNG")


# --------------------------------------------------------------------------- reading


def _open_image(path: StrPath) -> tuple[Image.Image, str]:
    """Open and fully decode an image, turning every failure into :class:`MaskError`;
    returns the image and its file format ("PNG", "JPEG"...; a copy forgets it)."""
    try:
        with Image.open(path) as image:
            image.load()  # decode now: truncated files fail here, not later
            return image.copy(), (image.format or "").upper()
    except FileNotFoundError:
        raise MaskError(f"mask file not found: {path}") from None
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise MaskError(f"cannot read mask {path}: {error}") from None


def _rank_nonzero_values(values: np.ndarray, path: StrPath) -> np.ndarray:
    """Gray levels (H, W) -> ids: each distinct nonzero level, in increasing order, gets 1..n."""
    levels = np.unique(values)
    levels = levels[levels != 0]
    if len(levels) > 255:
        raise MaskError(f"mask {path} has {len(levels)} gray levels; at most 255 objects fit")
    # searchsorted gives each pixel its level's rank; +1 because 0 stays background.
    ids = np.zeros(values.shape, dtype=np.uint8)
    nonzero = values != 0
    ids[nonzero] = np.searchsorted(levels, values[nonzero]) + 1
    return ids


def _colours_to_ids(rgb: np.ndarray, background: np.ndarray, path: StrPath) -> np.ndarray:
    """Colour-coded mask (H, W, 3) uint8 -> ids (H, W) uint8.

    ``background`` (H, W) bool marks pixels forced to id 0 (black, or fully transparent).
    If every object colour is a DAVIS palette colour, its palette index is the id (so an
    RGB render of a DAVIS mask reads back with its original ids); otherwise colours get
    1..n in order of first appearance, scanning rows top to bottom.
    """
    packed = (
        (rgb[..., 0].astype(np.int32) << 16)
        | (rgb[..., 1].astype(np.int32) << 8)
        | rgb[..., 2].astype(np.int32)
    )
    packed[background] = 0
    colours, first_seen, inverse = np.unique(packed.ravel(), return_index=True, return_inverse=True)
    ids_of_colour = np.zeros(len(colours), dtype=np.int64)
    objects = colours != 0
    if objects.sum() > 255:
        raise MaskError(
            f"mask {path} has {int(objects.sum())} distinct colours; "
            "at most 255 objects fit (is it a photo or a JPEG rather than a mask?)"
        )
    palette_ids = [_PALETTE_INDEX_OF_COLOUR.get(int(c), 0) for c in colours[objects]]
    if all(palette_ids):
        ids_of_colour[objects] = palette_ids
    else:
        order = np.argsort(first_seen[objects], kind="stable")
        ranks = np.empty(len(order), dtype=np.int64)
        ranks[order] = np.arange(1, len(order) + 1)
        ids_of_colour[objects] = ranks
    return ids_of_colour[inverse.ravel()].reshape(packed.shape).astype(np.uint8)


@dataclass(frozen=True)
class MaskFile:
    """A mask file read as object ids.

    ``ids`` (H, W) uint8, 0 background. ``explicit_ids``: the file names its ids (palette
    indices, or RGB colours that are all DAVIS palette colours), so id 2 means object 2;
    otherwise (grey levels, 0/255 binary, arbitrary colours) the ids are ranks 1..n
    within this file and say nothing about which tracked object is meant.
    """

    ids: np.ndarray
    explicit_ids: bool


#: A level (grey value or colour) holding less than this share of the object pixels is
#: "minor": anti-aliased edges and JPEG ringing make many minor levels, real objects few.
_MINOR_SHARE = 0.01
#: Container formats whose compression changes pixel values.
_LOSSY_FORMATS = frozenset({"JPEG", "MPO", "WEBP"})


def read_mask(path: StrPath) -> np.ndarray:
    """Read a mask file as object ids: (H, W) uint8, 0 background, 1..K objects.

    - palette ("P"/"PA") PNG: the palette indices (DAVIS-2017). A palette image whose
      only nonzero index is 255 is a DAVIS-2016 binary mask stored as palette: 255 -> 1.
    - grayscale ("L", "LA", "1", "I", "I;16"): 0 is background; a single nonzero level
      (DAVIS-2016's 255) -> 1; several levels -> 1..n in increasing gray order.
    - RGB/RGBA and other colour modes: black (and alpha 0) is background, each other
      colour one object (see :func:`_colours_to_ids`).

    Raises :class:`MaskError` (a ``ValueError``) with a one-line message when the file
    is missing, unreadable or holds more than 255 objects.
    """
    return _read(path, strict=False).ids


def read_user_mask(path: StrPath) -> MaskFile:
    """Read a mask a person made (``eamstcn-run --mask/--add-mask``): ids and whether the
    file names them (:class:`MaskFile`), as :func:`read_mask` reads them.

    Also refuses, in one line, a mask that was saved lossy or with smoothed edges (a
    binary mask saved as JPEG has dozens of grey levels, which would otherwise read as
    dozens of objects): a JPEG/WebP file with more than one object level, or a file whose
    levels are mostly "minor" ones (each on under 1% of the object pixels: edge pixels).
    """
    return _read(path, strict=True)


def _read(path: StrPath, strict: bool) -> MaskFile:
    image, file_format = _open_image(path)
    mode = image.mode
    lossy_format = file_format in _LOSSY_FORMATS
    if mode in ("P", "PA"):
        ids = np.array(image.getchannel(0) if mode == "PA" else image, dtype=np.uint8)
        nonzero = np.unique(ids[ids != 0])
        if len(nonzero) == 1 and nonzero[0] == 255:
            return MaskFile((ids != 0).astype(np.uint8), explicit_ids=False)  # DAVIS-2016 0/255 as palette
        return MaskFile(np.ascontiguousarray(ids), explicit_ids=True)
    if mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"):
        gray = np.array(image.getchannel(0) if mode == "LA" else image)
        if gray.dtype == np.bool_:
            return MaskFile(gray.astype(np.uint8), explicit_ids=False)
        if strict:
            _refuse_lossy(path, gray, gray != 0, lossy_format, "grey levels")
        return MaskFile(_rank_nonzero_values(gray, path), explicit_ids=False)
    rgba = np.array(image.convert("RGBA"), dtype=np.uint8)
    background = rgba[..., 3] == 0
    rgb = np.ascontiguousarray(rgba[..., :3])
    if strict:
        packed = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2].astype(np.int32)
        _refuse_lossy(path, packed, (packed != 0) & ~background, lossy_format, "colours")
    ids = _colours_to_ids(rgb, background, path)
    explicit = _all_palette_colours(rgb, background)
    return MaskFile(ids, explicit_ids=explicit)


def _all_palette_colours(rgb: np.ndarray, background: np.ndarray) -> bool:
    packed = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2].astype(np.int32)
    colours = np.unique(packed[~background])
    colours = colours[colours != 0]
    return len(colours) > 0 and all(int(c) in _PALETTE_INDEX_OF_COLOUR for c in colours)


def _refuse_lossy(path: StrPath, values: np.ndarray, objects: np.ndarray, lossy_format: bool, what: str) -> None:
    """Raise :class:`MaskError` when the object pixels' values (``values`` (H, W): grey
    levels or packed colours; ``objects`` (H, W) bool: not background) look like a lossy
    or anti-aliased mask."""
    object_values = values[objects]
    if object_values.size == 0:
        return
    unique, counts = np.unique(object_values, return_counts=True)
    levels = len(counts)
    minor_levels = unique[counts < _MINOR_SHARE * object_values.size]
    # Smoothed edges and ringing are a pixel or two wide: their levels have no pixel whose
    # four neighbours share its value. Many small objects drawn exactly (each a region) do,
    # and are objects, not edges (255 of them read as "anti-aliased" before issue 20).
    minor = int(np.count_nonzero(~np.isin(minor_levels, values[_interior(values) & objects])))
    if lossy_format and levels > 1:
        reason = f"is a JPEG/WebP: lossy compression turned its objects into {levels} {what}"
    elif levels >= 3 and minor > levels - minor:
        reason = f"has anti-aliased or lossy edges: {levels} {what}, {minor} of them only on a few edge pixels"
    else:
        return
    raise MaskError(
        f"mask {path} {reason}, which would read as {levels} objects; "
        "save it as a PNG with exact values (0/255 for one object, or a palette PNG of object ids)"
    )


def _interior(values: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels whose four neighbours (edge pixels replicated) share their value."""
    padded = np.pad(values, 1, mode="edge")
    centre = padded[1:-1, 1:-1]
    return ((padded[:-2, 1:-1] == centre) & (padded[2:, 1:-1] == centre)
            & (padded[1:-1, :-2] == centre) & (padded[1:-1, 2:] == centre))


def read_frame(path: StrPath) -> np.ndarray:
    """Read an image file as RGB (H, W, 3) uint8."""
    try:
        with Image.open(path) as image:
            return np.array(image.convert("RGB"), dtype=np.uint8)
    except FileNotFoundError:
        raise FileNotFoundError(f"frame not found: {path}") from None
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"cannot read frame {path}: {error}") from None


# --------------------------------------------------------------------------- layout


def _sequence_dir(root: StrPath, kind: str, resolution: str, seq: str) -> Path:
    return Path(root) / kind / resolution / seq


def list_sequences(root: StrPath, resolution: str = "480p") -> list[str]:
    """Sorted sequence names: the folders of ``root/JPEGImages/<resolution>/``."""
    folder = Path(root) / "JPEGImages" / resolution
    if not folder.is_dir():
        raise FileNotFoundError(f"not a DAVIS dataset: {folder} is missing")
    return sorted(entry.name for entry in folder.iterdir() if entry.is_dir())


def frame_paths(root: StrPath, seq: str, resolution: str = "480p") -> list[Path]:
    """The frame files of one sequence (.jpg/.jpeg/.png), sorted by name."""
    folder = _sequence_dir(root, "JPEGImages", resolution, seq)
    if not folder.is_dir():
        raise FileNotFoundError(f"sequence {seq!r} not found: {folder} is missing")
    frames = [
        entry
        for entry in folder.iterdir()
        if entry.is_file() and entry.suffix.lower() in FRAME_EXTENSIONS
    ]
    if not frames:
        raise FileNotFoundError(f"sequence {seq!r} has no frames in {folder}")
    return sorted(frames, key=lambda p: p.name)


def annotation_paths(root: StrPath, seq: str, resolution: str = "480p") -> list[Path | None]:
    """One entry per frame (same order as :func:`frame_paths`): the mask file
    ``Annotations/<resolution>/<seq>/<frame stem>.png``, or None where it does not exist
    (DAVIS test sets annotate only the first frame)."""
    folder = _sequence_dir(root, "Annotations", resolution, seq)
    paths: list[Path | None] = []
    for frame in frame_paths(root, seq, resolution):
        candidate = folder / f"{frame.stem}.png"
        paths.append(candidate if candidate.is_file() else None)
    return paths


def load_sequence(
    root: StrPath, seq: str, resolution: str = "480p"
) -> tuple[np.ndarray, list[np.ndarray | None]]:
    """Load one sequence.

    Returns ``(frames, masks)``: frames (T, H, W, 3) uint8 RGB, and masks a list of T
    entries, each object ids (H, W) uint8 or None for a frame without annotation
    (``np.stack(masks)`` gives (T, H, W) when every frame is annotated).
    """
    frames = np.stack([read_frame(p) for p in frame_paths(root, seq, resolution)])
    height, width = frames.shape[1:3]
    masks: list[np.ndarray | None] = []
    for path in annotation_paths(root, seq, resolution):
        mask = None if path is None else read_mask(path)
        if mask is not None and mask.shape != (height, width):
            raise MaskError(f"mask {path} is {mask.shape[1]}x{mask.shape[0]}, frames are {width}x{height}")
        masks.append(mask)
    return frames, masks


def write_sequence(
    root: StrPath,
    seq: str,
    frames: np.ndarray,
    masks: np.ndarray | Sequence[np.ndarray | None] | None,
    resolution: str = "480p",
) -> None:
    """Write one sequence in DAVIS layout.

    frames (T, H, W, 3) uint8 RGB -> ``JPEGImages/<res>/<seq>/%05d.jpg`` (quality 95);
    masks (T, H, W) ids, or a length-T list with None for unannotated frames, or None
    -> ``Annotations/<res>/<seq>/%05d.png`` palette PNGs.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[3] != 3:
        raise ValueError(f"frames must be (T, H, W, 3), got {frames.shape}")
    if masks is not None and len(masks) != len(frames):
        raise ValueError(f"{len(frames)} frames but {len(masks)} masks")
    frame_dir = _sequence_dir(root, "JPEGImages", resolution, seq)
    mask_dir = _sequence_dir(root, "Annotations", resolution, seq)
    for t, frame in enumerate(frames):
        write_frame(frame_dir / f"{t:05d}.jpg", frame, quality=95)
        mask = None if masks is None else masks[t]
        if mask is None:
            continue
        if np.shape(mask) != frame.shape[:2]:
            raise ValueError(f"mask {t} has shape {np.shape(mask)}, frame has {frame.shape[:2]}")
        write_indexed_png(mask_dir / f"{t:05d}.png", mask)

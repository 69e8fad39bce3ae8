"""Find annotated videos and still images in the folder layouts training accepts.

Video layouts (phase 2; phase 1 can also use their annotated frames as stills):

- DAVIS-2016/2017: ``root/JPEGImages/<resolution>/<seq>/*.jpg`` and
  ``root/Annotations/<resolution>/<seq>/*.png`` (2016: 0/255 masks; 2017: palette ids).
- YouTube-VOS 2018: ``root/JPEGImages/<seq>/*.jpg`` and ``root/Annotations/<seq>/*.png``
  (every 5th frame annotated in the train split), or the same under ``root/train/``.

Still layout (phase 1): ``root/images/<name>.<jpg|png>`` with ``root/masks/<name>.png``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

from eamstcn.data.clip_reader import frame_files


class LayoutError(ValueError):
    """A folder that holds no recognised training layout; the message is for the user."""


@dataclass(frozen=True)
class Video:
    """One annotated video: frame files in time order and, per frame, its mask or None.

    ``stride`` is the typical frame-number step between consecutive listed frames (5 for
    YouTube-VOS train folders, 1 for DAVIS), so gaps can be measured in real frames.
    """

    name: str
    frames: tuple[Path, ...]
    masks: tuple[Path | None, ...]
    stride: int = 1
    source: int = 0  # which --data folder it came from: each folder gets an equal share of samples

    @property
    def annotated(self) -> list[int]:
        return [i for i, mask in enumerate(self.masks) if mask is not None]


def _frame_stride(frames: list[Path]) -> int:
    numbers = [int(p.stem) for p in frames if re.fullmatch(r"\d+", p.stem)]
    if len(numbers) < 2:
        return 1
    steps = sorted(b - a for a, b in zip(numbers, numbers[1:]))
    return max(1, steps[len(steps) // 2])


def _resolution_folder(images: Path, annotations: Path, resolution: str | None) -> str | None:
    """The resolution folder to use under JPEGImages/ and Annotations/, or None for a
    YouTube-VOS layout (sequences directly below). ``resolution`` None picks 480p, then
    Full-Resolution, then the only folder both sides share (a 240p copy, say)."""
    shared = sorted(p.name for p in images.iterdir() if p.is_dir() and (annotations / p.name).is_dir())
    if resolution is not None:
        if resolution not in shared:
            known = ", ".join(shared) if shared else "none"
            raise LayoutError(f"{images.parent} has no resolution folder {resolution!r} "
                              f"under JPEGImages/ and Annotations/ (found: {known})")
        return resolution
    for preferred in ("480p", "Full-Resolution"):
        if preferred in shared:
            return preferred
    # A DAVIS root with one resolution folder (e.g. 240p) holds sequence folders of
    # sequence folders; YouTube-VOS holds sequence folders of frames.
    if len(shared) == 1 and not frame_files(images / shared[0]):
        return shared[0]
    return None


def _video_dirs(root: Path, resolution: str | None = None) -> tuple[Path, Path] | None:
    """(frames parent, annotations parent) whose children are sequence folders."""
    for base in (root, root / "train"):
        images, annotations = base / "JPEGImages", base / "Annotations"
        if not images.is_dir() or not annotations.is_dir():
            continue
        folder = _resolution_folder(images, annotations, resolution)
        if folder is not None:
            return images / folder, annotations / folder
        return images, annotations  # YouTube-VOS: sequences directly below
    return None


def find_videos(root: str | Path, resolution: str | None = None, exclude: tuple[str, ...] | list[str] = ()) -> list[Video]:
    """Every sequence with at least one annotated frame, sorted by name.

    ``resolution``: the DAVIS resolution folder (None: 480p, Full-Resolution, or the only
    one there). ``exclude``: sequence names left out (a held-out validation set).
    """
    root = Path(root)
    dirs = _video_dirs(root, resolution)
    if dirs is None:
        raise LayoutError(f"{root} has no JPEGImages/ and Annotations/ folders (DAVIS or YouTube-VOS layout)")
    image_base, mask_base = dirs
    videos = []
    for seq_dir in sorted(p for p in image_base.iterdir() if p.is_dir()):
        if seq_dir.name in exclude:
            continue
        frames = frame_files(seq_dir)
        if not frames:
            continue
        masks = tuple(
            (mask_base / seq_dir.name / f"{f.stem}.png") if (mask_base / seq_dir.name / f"{f.stem}.png").is_file() else None
            for f in frames
        )
        if any(m is not None for m in masks):
            videos.append(Video(seq_dir.name, tuple(frames), masks, _frame_stride(frames)))
    if not videos:
        where = f"{image_base.relative_to(root)}" if image_base != root else "."
        raise LayoutError(f"{root} holds no sequence with annotated frames (looked in {where}; "
                          "--resolution names the DAVIS resolution folder)")
    return videos


def find_all_videos(roots: list[Path], resolution: str | None = None, exclude: tuple[str, ...] | list[str] = ()) -> list[Video]:
    """:func:`find_videos` over several folders (e.g. real video plus generated clips)."""
    videos = [replace(video, source=index) for index, root in enumerate(roots)
              for video in find_videos(root, resolution, exclude)]
    missing = sorted(set(exclude) - {name for root in roots for name in sequence_names(root, resolution)})
    if missing:
        raise LayoutError(f"held-out sequence(s) not found in the training data: {', '.join(missing)}")
    return videos


def sequence_names(root: str | Path, resolution: str | None = None) -> set[str]:
    """Names of the sequence folders of a video layout (no frame or mask is listed)."""
    dirs = _video_dirs(Path(root), resolution)
    return set() if dirs is None else {p.name for p in dirs[0].iterdir() if p.is_dir()}


def resolution_of(root: str | Path, resolution: str | None = None) -> str:
    """The DAVIS resolution folder of ``root`` (see :func:`find_videos`); raises LayoutError."""
    root = Path(root)
    images, annotations = root / "JPEGImages", root / "Annotations"
    if not images.is_dir() or not annotations.is_dir():
        raise LayoutError(f"{root} is not a DAVIS-layout folder (JPEGImages/ and Annotations/)")
    folder = _resolution_folder(images, annotations, resolution)
    if folder is None:
        raise LayoutError(f"{root} has no resolution folder under JPEGImages/ (a DAVIS layout needs one, e.g. 480p)")
    return folder


def find_stills(root: str | Path, resolution: str | None = None) -> list[tuple[Path, Path]]:
    """(image, mask) pairs from an images/ + masks/ folder or any video layout."""
    root = Path(root)
    if (root / "images").is_dir() and (root / "masks").is_dir():
        pairs = [
            (image, root / "masks" / f"{image.stem}.png")
            for image in frame_files(root / "images")
            if (root / "masks" / f"{image.stem}.png").is_file()
        ]
        if not pairs:
            raise LayoutError(f"{root}/images and {root}/masks share no file names")
        return pairs
    if _video_dirs(root, resolution) is None:
        raise LayoutError(
            f"{root} is neither a still-image folder (images/ + masks/) nor a DAVIS/YouTube-VOS folder"
        )
    return [(frame, mask) for video in find_videos(root, resolution) for frame, mask in zip(video.frames, video.masks) if mask is not None]

"""Training samples: 3-frame clips with up to two objects, as tensors.

Every sample is a pure function of (seed, rank, sample index): its random generator is
seeded from those three numbers, so a resumed run sees exactly the samples it would have
seen, with any number of loader workers, and no data-loader state needs saving.

- :class:`StillClips` (phase 1): one image + mask becomes a faux 3-frame video by shared
  flip / zoom / colour and per-frame albumentations affine warps.
- :class:`VideoClips` (phase 2): 3 temporally ordered annotated frames whose gaps follow
  the curriculum, time-reversed with probability ``reverse_p``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from eamstcn.data.davis_io import read_frame, read_mask
from eamstcn.ops import normalize_image
from eamstcn.training.layouts import Video

_MIN_OBJECT_PIXELS = 0.005  # fraction of the crop an object needs in frame 0 to be sampled
_TRIES = 8


@dataclass(frozen=True)
class Augmentation:
    """Geometric / photometric ranges. ``zoom`` scales frames relative to their native size
    before the crop (synthetic data is evaluated at its native scale)."""

    zoom: tuple[float, float] = (0.6, 1.0)
    video_warp: float = 0.5  # per-frame warp strength on real video, relative to stills
    rotate: float = 15.0
    scale: float = 0.2
    translate: float = 0.1
    shear: float = 15.0


def _frame_affine(aug: Augmentation, strong: bool) -> A.Compose:
    """Per-frame warp: full strength for faux videos from stills, ``video_warp`` for real
    video (0 keeps only the small per-frame colour change)."""
    factor = 1.0 if strong else aug.video_warp
    colour = A.ColorJitter(brightness=0.02, contrast=0.02, saturation=0.02, hue=0.0, p=1.0)
    if factor == 0:
        return A.Compose([colour])
    return A.Compose([
        A.Affine(
            rotate=(-aug.rotate * factor, aug.rotate * factor),
            scale=(1 - aug.scale * factor, 1 + aug.scale * factor),
            translate_percent=(-aug.translate * factor, aug.translate * factor),
            shear=(-aug.shear * factor, aug.shear * factor),
            border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0, p=1.0,
        ),
        colour,
    ])


_SHARED_COLOUR = A.Compose([
    A.ColorJitter(brightness=0.2, contrast=0.1, saturation=0.1, hue=0.02, p=1.0),
    A.ToGray(p=0.05),
])


def _seeded(transform: A.Compose, rng: np.random.Generator) -> A.Compose:
    transform.set_random_seed(int(rng.integers(2**31)))
    return transform


Frames = list[np.ndarray]


def _zoom_and_pad(images: Frames, masks: Frames, zoom: float, crop: tuple[int, int]) -> tuple[Frames, Frames]:
    """Resize all frames by ``zoom`` and pad (zeros) up to at least the crop size."""
    height, width = images[0].shape[:2]
    size = (max(1, round(width * zoom)), max(1, round(height * zoom)))
    images = [cv2.resize(im, size, interpolation=cv2.INTER_AREA if zoom < 1 else cv2.INTER_LINEAR) for im in images]
    masks = [cv2.resize(m, size, interpolation=cv2.INTER_NEAREST) for m in masks]
    pad_h, pad_w = max(0, crop[0] - size[1]), max(0, crop[1] - size[0])
    if pad_h or pad_w:
        images = [np.pad(im, ((0, pad_h), (0, pad_w), (0, 0))) for im in images]
        masks = [np.pad(m, ((0, pad_h), (0, pad_w))) for m in masks]
    return images, masks


class ClipDataset(Dataset):
    """Shared sampling machinery; subclasses provide :meth:`_raw` (3 frames + masks)."""

    strong_warp = False

    def __init__(
        self,
        crop: tuple[int, int],
        seed: int,
        rank: int = 0,
        max_objects: int = 2,
        augmentation: Augmentation | None = None,
        length: int = 2**62,
    ) -> None:
        self.crop = crop
        self.seed = seed
        self.rank = rank
        self.max_objects = max_objects
        self.aug = augmentation or Augmentation()
        self.length = length
        self._affine = _frame_affine(self.aug, self.strong_warp)

    def __len__(self) -> int:
        return self.length

    def _raw(self, rng: np.random.Generator, index: int) -> tuple[Frames, Frames]:
        raise NotImplementedError

    def _augment(self, rng: np.random.Generator, images: Frames, masks: Frames) -> tuple[Frames, Frames]:
        crop_h, crop_w = self.crop
        images, masks = _zoom_and_pad(images, masks, float(rng.uniform(*self.aug.zoom)), self.crop)
        if rng.random() < 0.5:
            images = [np.ascontiguousarray(im[:, ::-1]) for im in images]
            masks = [np.ascontiguousarray(m[:, ::-1]) for m in masks]
        # One colour change for the clip, then a small independent one per frame.
        colour = _seeded(_SHARED_COLOUR, rng)
        replay = colour(image=np.concatenate(images, axis=1))["image"]
        images = np.split(replay, len(images), axis=1)
        warped = [_seeded(self._affine, rng)(image=im, mask=m) for im, m in zip(images, masks)]
        images, masks = [w["image"] for w in warped], [w["mask"] for w in warped]
        height, width = masks[0].shape
        top = int(rng.integers(height - crop_h + 1))
        left = int(rng.integers(width - crop_w + 1))
        images = [im[top : top + crop_h, left : left + crop_w] for im in images]
        masks = [m[top : top + crop_h, left : left + crop_w] for m in masks]
        return images, masks

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        """Sample ``index`` -> frames (3, 3, H, W) normalised float32, first_masks (K, H, W)
        float32, labels (3, H, W) int64 in 0..K, selector (K,) float32; K = max_objects."""
        rng = np.random.default_rng([self.seed, self.rank, index])
        min_pixels = _MIN_OBJECT_PIXELS * self.crop[0] * self.crop[1]
        for _ in range(_TRIES):
            images, masks = self._augment(rng, *self._raw(rng, index))
            ids, counts = np.unique(masks[0], return_counts=True)
            candidates = [int(i) for i, c in zip(ids, counts) if i != 0 and c >= min_pixels]
            if candidates:
                break
        # After _TRIES misses the clip is kept with no object: it still teaches background.
        # The object count is drawn too: single-object clips teach K = 1 (no "others"
        # channel), and an unchosen look-alike becomes background, which teaches identity.
        count = int(rng.integers(1, min(self.max_objects, len(candidates)) + 1)) if candidates else 0
        chosen = [int(i) for i in rng.permutation(candidates)[:count]]
        return self._to_tensors(images, masks, chosen)

    def _to_tensors(self, images: Frames, masks: Frames, chosen: list[int]) -> dict[str, torch.Tensor]:
        crop_h, crop_w = self.crop
        labels = np.zeros((3, crop_h, crop_w), dtype=np.int64)
        for new_id, old_id in enumerate(chosen, start=1):
            for t in range(3):
                labels[t][masks[t] == old_id] = new_id
        first = np.zeros((self.max_objects, crop_h, crop_w), dtype=np.float32)
        selector = np.zeros(self.max_objects, dtype=np.float32)
        for k in range(len(chosen)):
            first[k] = labels[0] == k + 1
            selector[k] = 1.0
        frames = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div_(255.0)
        return {
            "frames": normalize_image(frames),
            "first_masks": torch.from_numpy(first),
            "labels": torch.from_numpy(labels),
            "selector": torch.from_numpy(selector),
        }


class StillClips(ClipDataset):
    """Faux 3-frame videos from (image, mask) pairs; this rank reads ``pairs[rank::world]``."""

    strong_warp = True

    def __init__(self, pairs: Sequence[tuple[Path, Path]], crop: tuple[int, int], seed: int,
                 rank: int = 0, world_size: int = 1, **kwargs) -> None:
        super().__init__(crop, seed, rank, **kwargs)
        self.pairs = list(pairs)[rank::world_size] or list(pairs)
        if not self.pairs:
            raise ValueError("no still images to train on")

    def _raw(self, rng: np.random.Generator, index: int) -> tuple[Frames, Frames]:
        image_path, mask_path = self.pairs[int(rng.integers(len(self.pairs)))]
        image, mask = read_frame(image_path), read_mask(mask_path)
        return [image] * 3, [mask] * 3


def choose_frames(rng: np.random.Generator, count: int, max_gap: int) -> list[int]:
    """Three increasing positions in 0..count-1, consecutive gaps in 1..max_gap.

    Needs count >= 3; the gap is shrunk to what the sequence allows."""
    gap = max(1, min(max_gap, (count - 1) // 2))
    first_gap, second_gap = (int(g) for g in rng.integers(1, gap + 1, size=2))
    start = int(rng.integers(count - first_gap - second_gap))
    return [start, start + first_gap, start + first_gap + second_gap]


class VideoClips(ClipDataset):
    """3 temporally ordered annotated frames from real videos; this rank reads
    ``videos[rank::world]``. ``max_gap_at(index)`` gives the curriculum's gap (in real
    frames) for sample ``index``."""

    def __init__(self, videos: Sequence[Video], crop: tuple[int, int], seed: int,
                 max_gap_at: Callable[[int], int], rank: int = 0, world_size: int = 1,
                 reverse_p: float = 0.5, **kwargs) -> None:
        super().__init__(crop, seed, rank, **kwargs)
        usable = [v for v in videos if len(v.annotated) >= 3]
        if not usable:
            raise ValueError("no video has 3 or more annotated frames")
        self.videos = usable[rank::world_size] or usable
        self.max_gap_at = max_gap_at
        self.reverse_p = reverse_p
        # Each source folder gets an equal share of samples, however many videos it holds
        # (30 real sequences next to 300 generated clips would otherwise be 10% of samples).
        sources = [v.source for v in self.videos]
        counts = {s: sources.count(s) for s in set(sources)}
        self._weights = None if len(counts) == 1 else np.array([1.0 / (len(counts) * counts[s]) for s in sources])

    def _raw(self, rng: np.random.Generator, index: int) -> tuple[Frames, Frames]:
        if self._weights is None:
            video = self.videos[int(rng.integers(len(self.videos)))]
        else:
            video = self.videos[int(rng.choice(len(self.videos), p=self._weights))]
        annotated = video.annotated
        gap = max(1, round(self.max_gap_at(index) / video.stride))
        picks = [annotated[i] for i in choose_frames(rng, len(annotated), gap)]
        if rng.random() < self.reverse_p:
            picks.reverse()
        images = [read_frame(video.frames[i]) for i in picks]
        masks = [read_mask(video.masks[i]) for i in picks]  # type: ignore[arg-type]
        return images, masks

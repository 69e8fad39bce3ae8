"""The clip every backend runs on: generated (default) or real footage, with a first mask."""

from __future__ import annotations

from pathlib import Path

from eamstcn.data.clip_reader import Clip, ClipError, ellipse_mask, read_clip


def generated_clip(height: int, width: int, frames: int, objects: int, seed: int = 2024) -> Clip:
    """A synthetic clip with panning, occlusion, fast and still stretches (eamstcn.data.synth)."""
    from eamstcn.data.synth import generate_sequence

    sequence = generate_sequence(seed, frames=frames, height=height, width=width, objects=objects)
    return Clip(f"generated ({objects} objects, seed {seed})", sequence.frames, sequence.masks[0])


def footage_clip(video: str | None, frames_dir: Path | None, mask: Path | None, count: int) -> Clip:
    """Up to ``count`` frames of real footage, read by the one clip reader
    (:func:`eamstcn.data.clip_reader.read_clip`: the checks and messages of
    ``eamstcn-run``'s sources); ``mask`` is the first frame's mask (a centred ellipse when
    none is given: speed does not depend on what is marked). The mask is read and checked
    as ``eamstcn-run`` reads it: a lossy (JPEG) or anti-aliased mask and another aspect
    ratio are refused, the same aspect ratio at another size is resized."""
    from eamstcn.data.davis_io import read_user_mask
    from eamstcn.runtime.mask_plan import fit_mask

    frames = read_clip(video, frames_dir, count)
    height, width = frames.shape[1:3]
    if mask is None:
        first = ellipse_mask(height, width)
    else:
        first = fit_mask(read_user_mask(mask).ids, (height, width), str(mask), notify=lambda message: None)
    if not first.any():
        raise ClipError(f"mask {mask} marks no object")
    return Clip(str(frames_dir) if frames_dir is not None else str(video), frames, first)

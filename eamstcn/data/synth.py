"""Deterministic synthetic annotated video for tests, smoke training and demos.

Each sequence is built to exercise what makes video object segmentation hard:

- textured objects (ellipses, blobs, star-shaped polygons), each filled with its own
  procedural texture, on a textured background larger than the frame that pans
  (camera motion);
- a piecewise motion schedule shared by the scene: still stretches (nothing moves but
  sensor noise), slow stretches and fast stretches, with scale change and rotation;
- an occluder, a textured distractor that is *not* annotated, which enters from off
  screen, covers the last object completely for a few frames and leaves again;
- with two or more objects, objects 1 and 2 are look-alikes (same texture family and
  colours, same shape kind) that cross each other and swap places.

Masks are exact: frame pixels and labels are rasterised from the same polygons, in the
same drawing order (objects 1..K, then the occluder), so later shapes cover earlier
ones in both. Every object is fully visible in frame 0. Same seed and arguments give
byte-identical output.

Object trajectories are in image coordinates (they already include the camera's
motion), which keeps every object inside the frame by construction.
"""

from __future__ import annotations

import colorsys
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from eamstcn.data.davis_io import write_sequence
from eamstcn.fileio import atomic_target

__all__ = [
    "SyntheticSequence",
    "VideoWriteError",
    "generate_dataset",
    "generate_sequence",
    "sequence_seed",
    "write_video",
]

_MIN_SIZE = 32  # below this the objects would shrink to a few pixels
_SCALE_RANGE = (0.75, 1.3)  # per-object scale over time; 1.0 in frame 0
_NOISE_SIGMA = 2.0  # sensor noise (gray levels), so "still" frames are not identical


@dataclass(frozen=True, eq=False)
class SyntheticSequence:
    """One synthetic annotated clip.

    frames: (T, H, W, 3) uint8 RGB. masks: (T, H, W) uint8 object ids 0..K (0 is
    background and also the occluder, which is not an annotated object).
    occlusion: (object id, first, last) frames during which that object is completely
    hidden by the occluder, or None (fewer than 3 frames).
    swap: (first, last) frames of the crossing in which look-alike objects 1 and 2
    trade places, or None (one object, or too few frames).
    """

    frames: np.ndarray
    masks: np.ndarray
    name: str
    occlusion: tuple[int, int, int] | None = None
    swap: tuple[int, int] | None = None


class VideoWriteError(RuntimeError):
    """The video file could not be written (no encoder, bad path...)."""


# --------------------------------------------------------------------------- textures


@dataclass(frozen=True)
class _Family:
    """A texture family: pattern kind, its geometry and two RGB colours (float 0..255)."""

    kind: str
    period: float
    angle: float
    colour_a: np.ndarray
    colour_b: np.ndarray


def _hsv(hue: float, sat: float, val: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(hue % 1.0, sat, val), dtype=np.float32) * 255.0


def _random_family(rng: np.random.Generator, saturated: bool) -> _Family:
    """Objects get saturated colours, the background muted ones."""
    hue = rng.random()
    sat = rng.uniform(0.55, 1.0) if saturated else rng.uniform(0.05, 0.35)
    val_a, val_b = (rng.uniform(0.55, 1.0), rng.uniform(0.2, 0.55))
    return _Family(
        kind=str(rng.choice(["stripes", "checker", "dots", "noise"])),
        period=float(rng.uniform(4.0, 12.0)),
        angle=float(rng.uniform(0.0, math.pi)),
        colour_a=_hsv(hue, sat, val_a),
        colour_b=_hsv(hue + rng.uniform(-0.08, 0.08), sat * rng.uniform(0.6, 1.0), val_b),
    )


def _value_noise(rng: np.random.Generator, height: int, width: int, cell: float) -> np.ndarray:
    """Smooth noise (H, W) float32 in [0, 1]: a coarse random grid upsampled bicubically."""
    grid = rng.random((max(2, round(height / cell) + 1), max(2, round(width / cell) + 1)))
    noise = cv2.resize(grid.astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC)
    low, high = float(noise.min()), float(noise.max())
    return (noise - low) / max(high - low, 1e-6)


def _texture(rng: np.random.Generator, family: _Family, height: int, width: int) -> np.ndarray:
    """Procedural texture (H, W, 3) uint8 of a family; the phase and noise are per instance,
    so two instances of one family look alike without being pixel copies."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    u = xs * math.cos(family.angle) + ys * math.sin(family.angle)
    v = -xs * math.sin(family.angle) + ys * math.cos(family.angle)
    phase = rng.uniform(0.0, 2.0 * math.pi)
    w = 2.0 * math.pi / family.period
    if family.kind == "stripes":
        pattern = 0.5 + 0.5 * np.sin(w * u + phase)
    elif family.kind == "checker":
        pattern = ((np.sin(w * u + phase) * np.sin(w * v + phase)) > 0).astype(np.float32)
    elif family.kind == "dots":
        pattern = ((np.cos(w * u + phase) + np.cos(w * v + phase)) > 0.9).astype(np.float32)
    else:
        pattern = _value_noise(rng, height, width, family.period)
    mixed = np.clip(0.8 * pattern + 0.2 * _value_noise(rng, height, width, 2.0 * family.period), 0, 1)
    colour = family.colour_b + (family.colour_a - family.colour_b) * mixed[..., None]
    return np.clip(colour, 0, 255).astype(np.uint8)


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Background texture (height, width, 3) uint8: two-octave noise plus faint stripes,
    muted colours, so that camera motion is visible but objects stand out."""
    family = _random_family(rng, saturated=False)
    base = 0.6 * _value_noise(rng, height, width, 24.0) + 0.4 * _value_noise(rng, height, width, 6.0)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    stripes = 0.5 + 0.5 * np.sin(2 * math.pi * (xs * math.cos(family.angle) + ys * math.sin(family.angle))
                                 / (3 * family.period))
    mixed = np.clip(0.8 * base + 0.2 * stripes, 0, 1)
    colour = family.colour_b + (family.colour_a - family.colour_b) * mixed[..., None]
    return np.clip(colour, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- shapes


def _unit_outline(rng: np.random.Generator, kind: str) -> np.ndarray:
    """Star-shaped outline (N, 2) float64 (x, y) around the origin, farthest vertex at 1."""
    if kind == "ellipse":
        theta = np.linspace(0, 2 * math.pi, 48, endpoint=False)
        ratio = rng.uniform(0.55, 0.95)
        points = np.stack([np.cos(theta), ratio * np.sin(theta)], axis=1)
    elif kind == "blob":
        theta = np.linspace(0, 2 * math.pi, 48, endpoint=False)
        radius = np.ones_like(theta)
        for harmonic in (2, 3, 4):
            radius += rng.uniform(0.04, 0.14) * np.cos(harmonic * theta + rng.uniform(0, 2 * math.pi))
        points = np.stack([radius * np.cos(theta), radius * np.sin(theta)], axis=1)
    else:  # polygon: jittered angles keep it star-shaped around the origin
        count = int(rng.integers(5, 9))
        theta = (np.arange(count) + rng.uniform(-0.3, 0.3, count)) * (2 * math.pi / count)
        radius = rng.uniform(0.55, 1.0, count)
        points = np.stack([radius * np.cos(theta), radius * np.sin(theta)], axis=1)
    return points / np.linalg.norm(points, axis=1).max()


def _inner_radius(outline: np.ndarray) -> float:
    """Distance from the origin to the nearest edge of a closed outline (N, 2).

    For a star-shaped outline the disc of this radius lies inside the polygon; the
    occluder is sized with it so that it provably covers its target.
    """
    start, end = outline, np.roll(outline, -1, axis=0)
    edge = end - start
    t = np.clip(-(start * edge).sum(1) / np.maximum((edge * edge).sum(1), 1e-12), 0.0, 1.0)
    return float(np.linalg.norm(start + t[:, None] * edge, axis=1).min())


@dataclass(frozen=True)
class _Sprite:
    """A shape ready to draw: outline (N, 2) in pixels at scale 1 around the origin and
    a texture (S, S, 3) uint8 whose centre pixel sits at the origin."""

    outline: np.ndarray
    texture: np.ndarray

    @property
    def outer_radius(self) -> float:
        return float(np.linalg.norm(self.outline, axis=1).max())


def _make_sprite(rng: np.random.Generator, outline: np.ndarray, family: _Family) -> _Sprite:
    side = 2 * math.ceil(float(np.linalg.norm(outline, axis=1).max())) + 4
    return _Sprite(outline=outline, texture=_texture(rng, family, side, side))


def _draw(
    frame: np.ndarray,
    labels: np.ndarray,
    sprite: _Sprite,
    centre: np.ndarray,
    scale: float,
    angle: float,
    label: int,
) -> None:
    """Paint a sprite into frame (H, W, 3) and write ``label`` into labels (H, W) on exactly
    the same pixels. Only the sprite's bounding box is warped and rasterised."""
    height, width = labels.shape
    cos, sin = math.cos(angle), math.sin(angle)
    linear = scale * np.array([[cos, -sin], [sin, cos]])
    points = sprite.outline @ linear.T + centre
    x0, y0 = np.floor(points.min(0)).astype(int)
    x1, y1 = np.ceil(points.max(0)).astype(int) + 1
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    if x0 >= x1 or y0 >= y1:
        return  # entirely off screen
    half = sprite.texture.shape[0] / 2.0
    offset = centre - linear @ np.array([half, half]) - np.array([x0, y0])
    patch = cv2.warpAffine(
        sprite.texture,
        np.hstack([linear, offset[:, None]]),
        (x1 - x0, y1 - y0),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REFLECT,
    )
    inside = np.zeros((y1 - y0, x1 - x0), dtype=np.uint8)
    # shift=4: sub-pixel vertices (1/16 px) so slow motion still moves the outline.
    vertices = np.round((points - np.array([x0, y0])) * 16).astype(np.int32)
    cv2.fillPoly(inside, [vertices], 1, lineType=cv2.LINE_8, shift=4)
    covered = inside.astype(bool)
    frame[y0:y1, x0:x1][covered] = patch[covered]
    labels[y0:y1, x0:x1][covered] = label


# --------------------------------------------------------------------------- motion

# Per-frame speeds as a fraction of the frame width, per segment kind.
_OBJECT_SPEED = {"still": (0.0, 0.0), "slow": (0.004, 0.012), "fast": (0.04, 0.07), "swap": (0.0, 0.0)}
_CAMERA_SPEED = {"still": (0.0, 0.0), "slow": (0.003, 0.01), "fast": (0.02, 0.04), "swap": (0.003, 0.01)}
_SPIN = {"still": 0.0, "slow": math.radians(2.0), "fast": math.radians(6.0), "swap": math.radians(1.0)}

Segment = tuple[int, int, str]  # (first keyframe, last keyframe, kind)


def _free_segments(rng: np.random.Generator, start: int, stop: int) -> list[Segment]:
    """Cut [start, stop] into segments of 3..7 frames; the first three kinds are a
    shuffled still/slow/fast so that every long enough clip has stillness and fast motion."""
    kinds = [str(k) for k in rng.permutation(["still", "slow", "fast"])]
    segments: list[Segment] = []
    t = start
    while t < stop:
        end = min(stop, t + int(rng.integers(3, 8)))
        kind = kinds[len(segments)] if len(segments) < 3 else str(rng.choice(["still", "slow", "fast"]))
        segments.append((t, end, kind))
        t = end
    return segments


def _reflect(value: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Fold coordinates back into [low, high] as if bouncing off the walls."""
    span = np.maximum(high - low, 1e-9)
    phase = np.mod(value - low, 2 * span)
    return low + np.where(phase > span, 2 * span - phase, phase)


def _step(rng: np.random.Generator, start: np.ndarray, distance: float,
          low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """A point ``distance`` away from ``start`` in a random direction, bounced into the box."""
    direction = rng.uniform(0, 2 * math.pi)
    target = start + distance * np.array([math.cos(direction), math.sin(direction)])
    return _reflect(target, low, high)


def _interpolate(keys: dict[int, np.ndarray], frames: int) -> np.ndarray:
    """Piecewise-linear track (frames, D) through keyframes {t: value (D,)}: constant
    velocity within each segment."""
    times = sorted(keys)
    values = np.stack([np.atleast_1d(keys[t]) for t in times]).astype(np.float64)
    grid = np.arange(frames)
    return np.stack([np.interp(grid, times, values[:, d]) for d in range(values.shape[1])], axis=1)


def _end_moving(segments: list[Segment]) -> None:
    """Objects 1 and 2 move apart in the last segment before the swap, so it must not be
    a still one: trade its kind with the nearest moving segment (keeps the mix of kinds)."""
    if not segments or segments[-1][2] != "still":
        return
    for i in range(len(segments) - 2, -1, -1):
        first, last, kind = segments[i]
        if kind != "still":
            segments[i] = (first, last, "still")
            segments[-1] = (segments[-1][0], segments[-1][1], kind)
            return
    segments[-1] = (segments[-1][0], segments[-1][1], "slow")


@dataclass(frozen=True)
class _Timeline:
    segments: list[Segment]
    occlusion: tuple[int, int, int] | None  # (enter, first hidden, last hidden); exit after
    swap: tuple[int, int] | None


def _timeline(rng: np.random.Generator, frames: int, objects: int) -> _Timeline:
    """Place the occlusion (~35% in) and the look-alike swap (last ~30%), disjoint, and
    cut the rest into still/slow/fast segments."""
    last = frames - 1
    occlusion = None
    if frames >= 3:
        hidden = max(1, round(0.12 * frames))
        first = int(np.clip(round(0.35 * frames) + rng.integers(-1, 2), 1, last - hidden))
        enter = max(0, first - max(1, round(0.08 * frames)))
        occlusion = (enter, first, first + hidden - 1)
    swap = None
    if objects >= 2 and frames >= 8:
        end = last - (1 if frames >= 12 else 0)
        begin = end - max(2, round(0.28 * frames))
        exit_by = occlusion[2] + 1 + max(1, round(0.1 * frames)) if occlusion else 1
        if begin >= exit_by:
            swap = (begin, end)
    if swap is None:
        segments = _free_segments(rng, 0, last)
    else:
        before = _free_segments(rng, 0, swap[0])
        _end_moving(before)
        segments = before + [(swap[0], swap[1], "swap")] + _free_segments(rng, swap[1], last)
    return _Timeline(segments=segments, occlusion=occlusion, swap=swap)


# --------------------------------------------------------------------------- scene


@dataclass(frozen=True)
class _Track:
    """Per-frame pose of one sprite: centre (T, 2) x/y, scale (T,), angle (T,)."""

    centre: np.ndarray
    scale: np.ndarray
    angle: np.ndarray


def _object_sprites(
    rng: np.random.Generator, objects: int, height: int, width: int
) -> tuple[list[_Sprite], np.ndarray, np.ndarray, np.ndarray]:
    """Make K sprites and non-overlapping frame-0 centres.

    Returns (sprites, centres (K, 2), box_low (2,), box_high (2,)) where the box is the
    region a centre may visit with the whole sprite, at the largest scale, in frame.
    Shapes shrink until K discs fit without overlap, so every object is fully visible
    in frame 0.
    """
    kinds = [str(k) for k in rng.choice(["ellipse", "blob", "polygon"], size=objects)]
    if objects >= 2:
        kinds[1] = kinds[0]  # look-alikes share the shape kind too
    outlines = [_unit_outline(rng, kind) for kind in kinds]
    relative = rng.uniform(0.8, 1.1, objects)
    families = [_random_family(rng, saturated=True) for _ in range(objects)]
    if objects >= 2:
        families[1] = families[0]
        relative[1] = relative[0] * rng.uniform(0.92, 1.05)
    base = 0.17 * min(height, width) / math.sqrt(max(1.0, objects / 2.0))
    for _attempt in range(40):
        radii = base * relative
        margin = radii.max() * _SCALE_RANGE[1] + 1.0
        low, high = np.array([margin, margin]), np.array([width - margin, height - margin])
        centres = _place(rng, radii, low, high) if (high > low).all() else None
        if centres is not None:
            break
        base *= 0.85
    else:  # pragma: no cover - 40 shrinks always fit for sizes >= _MIN_SIZE
        raise RuntimeError("could not place the objects without overlap")
    sprites = [_make_sprite(rng, o * r, f) for o, r, f in zip(outlines, radii, families)]
    return sprites, centres, low, high


def _place(rng: np.random.Generator, radii: np.ndarray, low: np.ndarray,
           high: np.ndarray, tries: int = 200) -> np.ndarray | None:
    """Rejection-sample centres (K, 2) whose discs (radius + 2 px gap) do not overlap."""
    centres: list[np.ndarray] = []
    for radius in radii:
        for _ in range(tries):
            candidate = rng.uniform(low, high)
            if all(np.linalg.norm(candidate - c) >= radius + r + 2.0 for c, r in zip(centres, radii)):
                centres.append(candidate)
                break
        else:
            return None
    return np.stack(centres)


def _object_tracks(
    rng: np.random.Generator, timeline: _Timeline, start: np.ndarray,
    low: np.ndarray, high: np.ndarray, frames: int, width: int, radii: np.ndarray,
) -> list[_Track]:
    """Keyframe every object at every segment boundary, then interpolate.

    In the swap segment objects 1 and 2 go to each other's place through a midpoint
    offset sideways, so they pass each other overlapping rather than head-on. In the
    segment before it they first move to opposite sides of the frame, so the swap is long.
    """
    count = len(start)
    centre = [{0: start[k].copy()} for k in range(count)]
    scale = [{0: np.array([1.0])} for _ in range(count)]
    angle = [{0: np.array([rng.uniform(0, 2 * math.pi)])} for _ in range(count)]
    pre_swap = timeline.swap[0] if timeline.swap else None
    for first, last, kind in timeline.segments:
        length = last - first
        for k in range(count):
            here = centre[k][first]
            if kind == "swap" and k < 2:
                continue  # both objects handled together below
            lo_speed, hi_speed = _OBJECT_SPEED["slow" if kind == "swap" else kind]
            centre[k][last] = _step(rng, here, rng.uniform(lo_speed, hi_speed) * width * length, low, high)
            if last == pre_swap and k < 2:
                centre[k][last] = _opposite_side(rng, k, low, high)
            still = kind == "still"
            scale[k][last] = _rescale(rng, scale[k][first], 0 if still else length)
            angle[k][last] = angle[k][first] + rng.uniform(-1, 1) * _SPIN[kind] * length
        if kind == "swap":
            _swap_keys(rng, centre, scale, angle, first, last, low, high, radii)
    return [
        _Track(
            centre=_interpolate(centre[k], frames),
            scale=_interpolate(scale[k], frames)[:, 0],
            angle=_interpolate(angle[k], frames)[:, 0],
        )
        for k in range(count)
    ]


def _rescale(rng: np.random.Generator, scale: np.ndarray, length: int) -> np.ndarray:
    """Grow or shrink by up to 5% per frame over ``length`` frames, within _SCALE_RANGE."""
    factor = math.exp(rng.uniform(-0.05, 0.05) * length)
    return np.clip(scale * factor, *_SCALE_RANGE)


def _opposite_side(rng: np.random.Generator, k: int, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Object 1 to the left fifth of the box, object 2 to the right fifth."""
    span = high - low
    x = low[0] + span[0] * (rng.uniform(0.0, 0.2) if k == 0 else rng.uniform(0.8, 1.0))
    return np.array([x, low[1] + span[1] * rng.uniform(0.2, 0.8)])


def _swap_keys(rng: np.random.Generator, centre: list[dict[int, np.ndarray]],
               scale: list[dict[int, np.ndarray]], angle: list[dict[int, np.ndarray]],
               first: int, last: int, low: np.ndarray, high: np.ndarray, radii: np.ndarray) -> None:
    a, b = centre[0][first], centre[1][first]
    centre[0][last], centre[1][last] = b.copy(), a.copy()
    middle = (first + last) // 2
    if first < middle < last:
        along = b - a
        side = np.array([-along[1], along[0]]) / max(float(np.linalg.norm(along)), 1e-9)
        offset = 0.6 * float(radii[:2].mean()) * side  # partial overlap while passing
        mid = (a + b) / 2
        centre[0][middle] = np.clip(mid + offset, low, high)
        centre[1][middle] = np.clip(mid - offset, low, high)
    for k in (0, 1):  # keep look-alikes the same size while they cross
        scale[k][last] = scale[k][first]
        angle[k][last] = angle[k][first] + rng.uniform(-1, 1) * _SPIN["swap"] * (last - first)


def _occluder(
    rng: np.random.Generator, target: _Track, target_radius: float, window: tuple[int, int, int],
    frames: int, height: int, width: int,
) -> tuple[_Sprite, _Track]:
    """A distractor that enters from off screen, sits exactly on the target during the
    hidden frames, then leaves through the opposite side.

    Its inner radius exceeds the target's outer radius at its largest scale in the
    window by 2 px, and both share the same centre, so the target is fully covered.
    """
    enter, first, last = window
    kind = str(rng.choice(["ellipse", "blob"]))
    outline = _unit_outline(rng, kind)
    minor = float(np.abs(outline[:, 1]).max())  # the ellipse's axis ratio (major axis is x)
    if kind == "ellipse" and minor < 0.75:  # a thin ellipse would need a huge major axis
        outline[:, 1] *= 0.75 / minor
    need = target_radius * float(target.scale[first:last + 1].max()) + 2.0
    sprite = _make_sprite(rng, outline * (need / _inner_radius(outline)), _random_family(rng, True))
    away = sprite.outer_radius + 2.0
    side = int(rng.integers(0, 4))
    off_in = _offscreen(rng, side, away, height, width)
    off_out = _offscreen(rng, side ^ 1, away, height, width)  # the opposite edge
    keys: dict[int, np.ndarray] = {0: off_in, enter: off_in}
    for t in range(first, last + 1):
        keys[t] = target.centre[t].copy()
    leave = min(frames - 1, last + 1 + max(0, round(0.1 * frames) - 1))
    keys[leave] = off_out
    keys[frames - 1] = off_out
    spin = rng.uniform(-1, 1) * _SPIN["slow"]
    track = _Track(
        centre=_interpolate(keys, frames),
        scale=np.ones(frames),
        angle=rng.uniform(0, 2 * math.pi) + spin * np.arange(frames),
    )
    return sprite, track


def _offscreen(rng: np.random.Generator, side: int, away: float, height: int, width: int) -> np.ndarray:
    """A centre ``away`` px beyond one frame edge (0 left, 1 right, 2 top, 3 bottom)."""
    if side in (0, 1):
        return np.array([-away if side == 0 else width + away, rng.uniform(0, height)])
    return np.array([rng.uniform(0, width), -away if side == 2 else height + away])


def _camera_track(rng: np.random.Generator, timeline: _Timeline, pad: np.ndarray,
                  frames: int, width: int) -> np.ndarray:
    """Top-left corner (T, 2) x/y of the view in the padded background, in [0, 2 * pad]."""
    keys = {0: pad.astype(np.float64)}
    for first, last, kind in timeline.segments:
        speed = rng.uniform(*_CAMERA_SPEED[kind]) * width
        keys[last] = _step(rng, keys[first], speed * (last - first), np.zeros(2), 2.0 * pad)
    return np.round(_interpolate(keys, frames)).astype(int)


def _add_sensor_noise(rng: np.random.Generator, video: np.ndarray, margin: int = 16) -> None:
    """Add Gaussian noise to video (T, H, W, 3) uint8 in place.

    One noise field slightly larger than a frame is drawn once and each frame gets a
    random crop of it, added with saturating uint8 arithmetic: per-frame normal draws and
    float clipping cost seconds per clip at 480p, this costs milliseconds.
    """
    _, height, width, _ = video.shape
    field = np.rint(rng.normal(0.0, _NOISE_SIGMA, (height + margin, width + margin, 3)))
    up = np.clip(field, 0, 255).astype(np.uint8)
    down = np.clip(-field, 0, 255).astype(np.uint8)
    for frame, (dy, dx) in zip(video, rng.integers(0, margin + 1, (len(video), 2))):
        window = (slice(dy, dy + height), slice(dx, dx + width))
        brighter = cv2.add(frame, np.ascontiguousarray(up[window]))
        frame[...] = cv2.subtract(brighter, np.ascontiguousarray(down[window]))


def _check_arguments(seed: int, frames: int, height: int, width: int, objects: int) -> None:
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    if min(height, width) < _MIN_SIZE:
        raise ValueError(f"height and width must be >= {_MIN_SIZE}, got {height}x{width}")
    if not 1 <= objects <= 255:
        raise ValueError(f"objects must be in 1..255, got {objects}")


def generate_sequence(
    seed: int,
    frames: int = 30,
    height: int = 96,
    width: int = 160,
    objects: int = 2,
    *,
    name: str | None = None,
) -> SyntheticSequence:
    """Render one synthetic clip: frames (T, H, W, 3) uint8 RGB, masks (T, H, W) uint8 ids.

    Object k has id k and is fully visible in frame 0. With ``frames >= 3`` object K is
    completely hidden by the occluder for a few frames around 35% of the clip and fully
    visible again afterwards (see ``SyntheticSequence.occlusion``); with ``objects >= 2``
    and ``frames >= 8`` the look-alike objects 1 and 2 swap places near the end.
    ``name`` defaults to ``synth-<seed>``.
    """
    _check_arguments(seed, frames, height, width, objects)
    rng = np.random.default_rng(seed)
    timeline = _timeline(rng, frames, objects)
    sprites, start, low, high = _object_sprites(rng, objects, height, width)
    radii = np.array([s.outer_radius for s in sprites])
    tracks = _object_tracks(rng, timeline, start, low, high, frames, width, radii)
    layers = list(zip(sprites, tracks, range(1, objects + 1)))
    occlusion = None
    if timeline.occlusion is not None:
        occluder, occluder_track = _occluder(
            rng, tracks[-1], sprites[-1].outer_radius, timeline.occlusion, frames, height, width
        )
        layers.append((occluder, occluder_track, 0))  # drawn last, labelled background
        occlusion = (objects, timeline.occlusion[1], timeline.occlusion[2])
    pad = np.ceil(0.25 * np.array([width, height])).astype(int)
    scenery = _background(rng, height + 2 * int(pad[1]), width + 2 * int(pad[0]))
    camera = _camera_track(rng, timeline, pad, frames, width)
    video = np.empty((frames, height, width, 3), dtype=np.uint8)
    masks = np.zeros((frames, height, width), dtype=np.uint8)
    for t in range(frames):
        x, y = camera[t]
        video[t] = scenery[y:y + height, x:x + width]
        for sprite, track, label in layers:
            _draw(video[t], masks[t], sprite, track.centre[t], track.scale[t], track.angle[t], label)
    _add_sensor_noise(rng, video)
    return SyntheticSequence(
        frames=video,
        masks=masks,
        name=name if name is not None else f"synth-{seed}",
        occlusion=occlusion,
        swap=timeline.swap,
    )


# --------------------------------------------------------------------------- output


def sequence_seed(seed: int, index: int) -> int:
    """The seed of sequence ``index`` of a dataset generated with ``seed`` (independent
    streams via numpy's SeedSequence, not seed + index)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, dtype=np.uint32)[0])


_FRAME_FILE = re.compile(r"^\d{5}\.(jpg|png)$")


def _clear_sequence(root: Path, name: str) -> None:
    """Remove frame/mask files a previous, longer run left in this sequence's folders."""
    for kind in ("JPEGImages", "Annotations"):
        folder = root / kind / "480p" / name
        if folder.is_dir():
            for entry in folder.iterdir():
                if entry.is_file() and _FRAME_FILE.match(entry.name):
                    entry.unlink()


def generate_dataset(
    out_dir: str | os.PathLike[str],
    sequences: int,
    frames: int,
    height: int,
    width: int,
    objects: int,
    seed: int,
    progress: bool = False,
    on_sequence: Callable[[SyntheticSequence], None] | None = None,
) -> list[str]:
    """Write ``sequences`` clips in DAVIS layout under ``out_dir`` and return their names.

    ``JPEGImages/480p/<name>/%05d.jpg`` and ``Annotations/480p/<name>/%05d.png`` (palette
    PNGs, every frame annotated), names ``synth-<seed>-<i:03d>``; sequence i uses
    :func:`sequence_seed` (seed, i). ``on_sequence`` is called with each clip after it is
    written (the CLI uses it to also write videos).
    """
    _check_arguments(seed, frames, height, width, objects)
    if sequences < 1:
        raise ValueError(f"sequences must be >= 1, got {sequences}")
    root = Path(out_dir)
    names: list[str] = []
    for index in tqdm(range(sequences), desc="synth", unit="seq", disable=not progress):
        name = f"synth-{seed}-{index:03d}"
        clip = generate_sequence(sequence_seed(seed, index), frames, height, width, objects, name=name)
        _clear_sequence(root, name)
        write_sequence(root, name, clip.frames, clip.masks, resolution="480p")
        if on_sequence is not None:
            on_sequence(clip)
        names.append(name)
    return names


def write_video(path: str | os.PathLike[str], frames: np.ndarray, fps: float = 24) -> Path:
    """Write RGB frames (T, H, W, 3) uint8, H and W even, as an mp4 (mp4v); return the path.

    Written to a temporary name with the same extension (the container is chosen from
    it), then renamed over ``path``. Raises :class:`VideoWriteError` if OpenCV cannot
    open a writer (no FFmpeg backend, unwritable folder).
    """
    array = np.asarray(frames)
    if array.ndim != 4 or array.shape[3] != 3 or array.dtype != np.uint8 or len(array) == 0:
        raise ValueError(f"frames must be (T, H, W, 3) uint8 with T >= 1, got {array.shape} {array.dtype}")
    height, width = array.shape[1:3]
    if height % 2 or width % 2:  # FFmpeg's mpeg4 encoder would silently drop a row/column
        raise ValueError(f"mp4v video needs an even height and width, got {height}x{width}")
    target = Path(path)
    with atomic_target(target, suffix=target.suffix) as tmp:
        writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (width, height))
        try:
            if not writer.isOpened():
                raise VideoWriteError(
                    f"cannot write video {target}: OpenCV could not open an mp4v writer for "
                    f"{width}x{height} (extension not a video container, or OpenCV without FFmpeg?)"
                )
            for frame in array:
                writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        finally:
            writer.release()  # the file is complete before atomic_target renames it
    return target

"""Calibration inputs for INT8: what each graph is fed when the fp32 graphs run a stream.

The key encoder sees normalised, padded frames. The value encoder and the decoder see
intermediate tensors, so random or synthetic tensors would calibrate them on the wrong
ranges; instead the fp32 ONNX graphs run the runtime's schedule over each clip:

- t = 0: key encoder; value encoder from the first mask; stored in memory.
- t >= 1: key encoder; memory read with the runtime's top-k readout, in its plain form
  (:func:`eamstcn.ops.topk_softmax_readout`); decoder; sigmoid and soft aggregation;
  the value encoder on this frame's predicted masks (recorded on every frame: each is an
  input the runtime would give it if it saved the frame); every ``save_every`` frames the
  value is stored (the first frame stays, the oldest other frame goes when full).

Each graph's inputs are recorded per call as numpy arrays; every ``HOLD_OUT``-th frame
of a clip is held out of calibration and used to measure parity instead. The label map of
every frame is kept too: running the same clips through INT8 graphs and comparing label
maps measures what quantization does to the masks (:func:`mask_agreement`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from eamstcn import ops
from eamstcn.data.clip_reader import Clip
from eamstcn.export.calibration_source import CalibrationSource
from eamstcn.graph_spec import DECODER, GRAPHS, KEY_ENCODER, VALUE_ENCODER

Feeds = dict[str, np.ndarray]
#: graph name -> one session-like callable: feeds -> {output name: array}.
GraphRunner = Callable[[Feeds], dict[str, np.ndarray]]

#: Every HOLD_OUT-th frame (t % HOLD_OUT == HOLD_OUT - 1) goes to the parity set.
HOLD_OUT = 4
SAVE_EVERY = 5
MEMORY_FRAMES = 8
TOP_K = 20


@dataclass
class CalibrationData:
    """Per graph, the recorded input feeds: ``calibration[graph]`` and ``held_out[graph]``
    (lists of {input name: array}, arrays as the graph takes them, float32)."""

    calibration: dict[str, list[Feeds]] = field(default_factory=lambda: {name: [] for name in GRAPHS})
    held_out: dict[str, list[Feeds]] = field(default_factory=lambda: {name: [] for name in GRAPHS})
    #: The pipeline's label map (Hp, Wp) uint8 (0 background, k object k) on every frame
    #: t >= 1 of every clip, in order: what the masks of two pipelines are compared on.
    labels: list[np.ndarray] = field(default_factory=list)

    def add(self, graph: str, feeds: Feeds, hold_out: bool) -> None:
        (self.held_out if hold_out else self.calibration)[graph].append(feeds)

    def counts(self) -> dict[str, dict[str, int]]:
        return {name: {"calibration": len(self.calibration[name]), "held_out": len(self.held_out[name])} for name in GRAPHS}


def ort_runner(session) -> GraphRunner:  # session: onnxruntime.InferenceSession
    """A :data:`GraphRunner` over an ONNX Runtime session (all outputs, by name)."""
    names = [output.name for output in session.get_outputs()]

    def run(feeds: Feeds) -> dict[str, np.ndarray]:
        return dict(zip(names, session.run(names, feeds)))

    return run


def _prepare_frame(frame: np.ndarray, frame_size: tuple[int, int]) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, Hp, Wp) float32 normalised and padded, as the runtime does."""
    x = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1).unsqueeze(0).float().div_(255.0)
    if tuple(x.shape[-2:]) != tuple(frame_size):
        x = F.interpolate(x, size=frame_size, mode="bilinear", align_corners=False, antialias=False)
    padded, _ = ops.pad_to_multiple(ops.normalize_image(x))
    return padded.contiguous()


def _first_masks(mask: np.ndarray, frame_size: tuple[int, int], objects: list[int]) -> torch.Tensor:
    """(H, W) ids -> (K, 1, Hp, Wp) float32 one-hot at the graphs' size (nearest resize)."""
    ids = torch.from_numpy(np.ascontiguousarray(mask))[None, None].float()
    if tuple(ids.shape[-2:]) != tuple(frame_size):
        ids = F.interpolate(ids, size=frame_size, mode="nearest")
    ids, _ = ops.pad_to_multiple(ids)
    return torch.cat([(ids == value).float() for value in objects], dim=0)


def _others(masks: torch.Tensor) -> torch.Tensor:
    return (masks.sum(dim=0, keepdim=True) - masks).contiguous()


class _Memory:
    """Keys (1, Ck, N) and values (K, Cv, N) of the stored frames; the first frame is permanent."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.keys: list[torch.Tensor] = []  # (1, Ck, hw) per frame
        self.values: list[torch.Tensor] = []  # (K, Cv, hw) per frame

    def add(self, key: torch.Tensor, value: torch.Tensor) -> None:
        if len(self.keys) == self.capacity:
            del self.keys[1], self.values[1]
        self.keys.append(key.flatten(2))
        self.values.append(value.flatten(2))

    def read(self, query: torch.Tensor, top_k: int) -> torch.Tensor:
        """query (1, Ck, h, w) -> readout (K, Cv, h, w)."""
        readout = ops.topk_softmax_readout(torch.cat(self.keys, dim=2), torch.cat(self.values, dim=2), query.flatten(2), top_k)
        return readout.view(*readout.shape[:2], *query.shape[-2:])


def _numpy(tensors: dict[str, torch.Tensor]) -> Feeds:
    return {name: np.ascontiguousarray(tensor.numpy(), dtype=np.float32) for name, tensor in tensors.items()}


@torch.no_grad()
def _run_clip(
    clip: Clip, runners: dict[str, GraphRunner], frame_size: tuple[int, int], data: CalibrationData,
    save_every: int, memory_frames: int, top_k: int,
) -> None:
    objects = [int(v) for v in np.unique(clip.first_mask) if v != 0]
    if not objects:
        raise ValueError(f"calibration clip {clip.name}: the first mask has no object")
    memory = _Memory(memory_frames)
    for t, frame in enumerate(clip.frames):
        hold = t % HOLD_OUT == HOLD_OUT - 1
        image = _prepare_frame(frame, frame_size)
        key_feeds = _numpy({"image": image})
        data.add(KEY_ENCODER, key_feeds, hold)
        encoded = {name: torch.from_numpy(array) for name, array in runners[KEY_ENCODER](key_feeds).items()}
        if t == 0:
            masks = _first_masks(clip.first_mask, frame_size, objects)
        else:
            readout = memory.read(encoded["key"], top_k)
            decoder_feeds = _numpy({"readout": readout, "f16x": encoded["f16x"], "f8": encoded["f8"], "f4": encoded["f4"]})
            data.add(DECODER, decoder_feeds, hold)
            logits = torch.from_numpy(runners[DECODER](decoder_feeds)["logits"])
            _, probabilities = ops.soft_aggregate(torch.sigmoid(logits))
            masks = probabilities[1:].contiguous()
            data.labels.append(probabilities[:, 0].argmax(dim=0).to(torch.uint8).numpy())
        value_feeds = _numpy({"image": image, "masks": masks, "others": _others(masks), "f16x": encoded["f16x"]})
        data.add(VALUE_ENCODER, value_feeds, hold)
        if t == 0 or t % save_every == 0:
            value = torch.from_numpy(runners[VALUE_ENCODER](value_feeds)["value"])
            memory.add(encoded["key"], value)


def collect(
    source: CalibrationSource,
    runners: dict[str, GraphRunner],
    frame_size: tuple[int, int],
    *,
    save_every: int = SAVE_EVERY,
    memory_frames: int = MEMORY_FRAMES,
    top_k: int = TOP_K,
) -> CalibrationData:
    """Run the fp32 graphs (``runners``) over every clip of ``source``; record each graph's inputs.

    ``frame_size`` (H, W) is the bundle's: frames are resized to it and padded to
    multiples of 16, masks resized nearest. Returns calibration and held-out feeds.
    """
    data = CalibrationData()
    for clip in source.clips:
        _run_clip(clip, runners, frame_size, data, save_every, memory_frames, top_k)
    return data


def mask_agreement(labels: list[np.ndarray], reference: list[np.ndarray]) -> tuple[float, float]:
    """(mean, minimum) over frames of the mean per-object IoU of two label-map sequences
    (an object absent from both maps of a frame counts as agreement)."""
    scores = []
    for ours, theirs in zip(labels, reference, strict=True):
        ids = (set(np.unique(ours).tolist()) | set(np.unique(theirs).tolist())) - {0}
        per_object = []
        for object_id in sorted(ids):
            a, b = ours == object_id, theirs == object_id
            union = np.logical_or(a, b).sum()
            per_object.append(1.0 if union == 0 else float(np.logical_and(a, b).sum() / union))
        scores.append(float(np.mean(per_object)) if per_object else 1.0)
    if not scores:
        return float("nan"), float("nan")
    return float(np.mean(scores)), float(np.min(scores))

"""Validation J&F with the dense PyTorch path (full softmax readout, fixed saving).

Used to pick ``best.pth`` during training on small validation sequences; the deployed
path (top-k, bounded memory, adaptive saving) is what ``eamstcn-eval`` measures. Scores
come from the same metrics module as ``eamstcn-eval``.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from eamstcn.data.davis_io import list_sequences, load_sequence
from eamstcn.evaluation.metrics import evaluate_sequence
from eamstcn.network import EamStcn, others_from_masks
from eamstcn.ops import normalize_image, pad_to_multiple, soft_aggregate, softmax_readout, unpad


@torch.no_grad()
def segment_dense(network: EamStcn, frames: np.ndarray, first_mask: np.ndarray, object_ids: list[int],
                  device: torch.device, save_every: int = 5) -> np.ndarray:
    """frames (T, H, W, 3) uint8, first_mask (H, W) ids -> predicted ids (T, H, W) uint8.

    Memory keeps frame 0 and every ``save_every``-th frame (unbounded: short sequences)."""
    network.eval()
    labels = np.zeros(frames.shape[:3], dtype=np.uint8)
    labels[0] = np.where(np.isin(first_mask, object_ids), first_mask, 0)
    memory_keys: list[torch.Tensor] = []
    memory_values: list[torch.Tensor] = []
    ids = torch.tensor(object_ids, device=device).view(-1, 1, 1, 1)
    for t, frame in enumerate(frames):
        rgb = torch.from_numpy(frame).to(device).permute(2, 0, 1).float().div(255.0)
        image, pads = pad_to_multiple(normalize_image(rgb).unsqueeze(0))
        key, f16x, f8, f4 = network.encode_key(image)
        if t == 0:
            mask = torch.from_numpy(first_mask).to(device)
            probs = F.pad((mask.view(1, 1, *mask.shape) == ids).float(), pads)  # (K, 1, H, W)
        else:
            readout = softmax_readout(torch.cat(memory_keys, 2), torch.cat(memory_values, 2), key.flatten(2))
            logits = network.decode(readout.view(len(object_ids), -1, *key.shape[-2:]), f16x, f8, f4)
            _, aggregated = soft_aggregate(torch.sigmoid(logits))
            probs = aggregated[1:]
            best = unpad(aggregated, pads).argmax(dim=0)[0].cpu().numpy()
            labels[t] = np.asarray(object_ids + [0], dtype=np.uint8)[best - 1]
        if t == 0 or (t % save_every == 0 and t < len(frames) - 1):
            value = network.encode_value(image, probs, others_from_masks(probs), f16x)
            memory_keys.append(key.flatten(2))
            memory_values.append(value.flatten(2))
    return labels


def validate(network: EamStcn, root: str | Path | list[tuple[Path, list[str] | None]], device: torch.device,
             size: tuple[int, int] | None = None) -> float:
    """Mean J&F (0..100) over every object of every sequence of a DAVIS-layout folder, or
    of several: ``root`` may be a list of (folder, sequence names or None for all).
    The resolution folder is found as training finds it (480p, or the only one).
    ``size`` (H, W) resizes frames and truth first (faster on big validation clips)."""
    from eamstcn.training.layouts import resolution_of

    sources = [(Path(root), None)] if isinstance(root, (str, Path)) else root
    j_all: list[float] = []
    f_all: list[float] = []
    for folder, names in sources:
        resolution = resolution_of(folder)
        for seq in names if names is not None else list_sequences(folder, resolution):
            frames, masks = load_sequence(folder, seq, resolution)
            if any(m is None for m in masks) or len(frames) < 3:
                continue
            truth = np.stack(masks)  # type: ignore[arg-type]
            if size is not None:
                frames = np.stack([cv2.resize(f, size[::-1], interpolation=cv2.INTER_AREA) for f in frames])
                truth = np.stack([cv2.resize(m, size[::-1], interpolation=cv2.INTER_NEAREST) for m in truth])
            object_ids = [int(i) for i in np.unique(truth[0]) if i not in (0, 255)]
            if not object_ids:
                continue
            predicted = segment_dense(network, frames, truth[0], object_ids, device)
            for scores in evaluate_sequence(truth, predicted, object_ids).values():
                j_all.append(float(scores["J"].mean()))
                f_all.append(float(scores["F"].mean()))
    if not j_all:
        raise ValueError(f"no annotated sequence to validate on in {', '.join(str(f) for f, _ in sources)}")
    # A plain float: numpy scalars would make the checkpoint fail weights_only loading.
    return float(100.0 * (np.mean(j_all) + np.mean(f_all)) / 2.0)

"""Pure tensor functions shared by training, the runtime and the bench.

Torch only (the runtime imports this module on machines without timm).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from eamstcn.graph_spec import IMAGENET_MEAN, IMAGENET_STD, STRIDE

Pads = tuple[int, int, int, int]  # (left, right, top, bottom), F.pad order


def pad_amounts(height: int, width: int, multiple: int = STRIDE) -> Pads:
    """Padding that brings (height, width) up to multiples of ``multiple``, split evenly.

    480x854 -> (5, 5, 0, 0): the odd pixel, if any, goes right / bottom.
    """
    extra_w = -width % multiple
    extra_h = -height % multiple
    return extra_w // 2, extra_w - extra_w // 2, extra_h // 2, extra_h - extra_h // 2


def padded_size(height: int, width: int, multiple: int = STRIDE) -> tuple[int, int]:
    """(H, W) after :func:`pad_amounts`."""
    left, right, top, bottom = pad_amounts(height, width, multiple)
    return height + top + bottom, width + left + right


def pad_to_multiple(x: torch.Tensor, multiple: int = STRIDE) -> tuple[torch.Tensor, Pads]:
    """Pad the last two axes of ``x`` (..., H, W) to multiples of ``multiple``.

    Returns the padded tensor and the pads needed by :func:`unpad`. Reflection would
    invent content at the border of a mask; zeros match what the reference does.
    """
    pads = pad_amounts(x.shape[-2], x.shape[-1], multiple)
    if not any(pads):
        return x, pads
    return F.pad(x, pads), pads


def unpad(x: torch.Tensor, pads: Pads) -> torch.Tensor:
    """Undo :func:`pad_to_multiple` on the last two axes."""
    left, right, top, bottom = pads
    height, width = x.shape[-2], x.shape[-1]
    return x[..., top : height - bottom, left : width - right]


def normalize_image(rgb: torch.Tensor) -> torch.Tensor:
    """RGB in [0, 1], (..., 3, H, W) -> ImageNet-normalised, same shape and dtype."""
    mean = torch.tensor(IMAGENET_MEAN, device=rgb.device, dtype=rgb.dtype).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=rgb.device, dtype=rgb.dtype).view(3, 1, 1)
    return (rgb - mean) / std


def soft_aggregate(probs: torch.Tensor, eps: float = 1e-7) -> tuple[torch.Tensor, torch.Tensor]:
    """Combine per-object sigmoid probabilities into one distribution per pixel.

    Args:
        probs: (K, 1, H, W) independent object probabilities p_k.
    Returns:
        (logits, probabilities), both (K+1, 1, H, W); index 0 is the background with
        p_0 = prod(1 - p_k). Probabilities sum to one over the first axis.
    """
    background = torch.prod(1 - probs, dim=0, keepdim=True)
    stacked = torch.cat([background, probs], dim=0).clamp(eps, 1 - eps)
    logits = torch.log(stacked / (1 - stacked))
    return logits, torch.softmax(logits, dim=0)


def affinity(memory_keys: torch.Tensor, query_keys: torch.Tensor) -> torch.Tensor:
    """Negative squared L2 similarity, without the per-query constant |q|^2.

    Args:
        memory_keys: (B, Ck, N) keys of N memory positions.
        query_keys: (B, Ck, M) keys of M query positions.
    Returns:
        (B, N, M) with S_ij = (2 k_i . q_j - |k_i|^2) / sqrt(Ck).
    """
    key_dim = memory_keys.shape[1]
    squared_norm = memory_keys.pow(2).sum(dim=1).unsqueeze(2)  # (B, N, 1)
    product = memory_keys.transpose(1, 2) @ query_keys  # (B, N, M)
    return (2 * product - squared_norm) / math.sqrt(key_dim)


def softmax_readout(memory_keys: torch.Tensor, memory_values: torch.Tensor, query_keys: torch.Tensor) -> torch.Tensor:
    """Dense readout used in training: softmax over every memory position.

    Args:
        memory_keys: (1, Ck, N); memory_values: (K, Cv, N); query_keys: (1, Ck, M).
    Returns:
        (K, Cv, M) readout.
    """
    weights = torch.softmax(affinity(memory_keys, query_keys), dim=1)  # (1, N, M); max-subtracted inside
    return memory_values @ weights


def topk_softmax_readout(
    memory_keys: torch.Tensor, memory_values: torch.Tensor, query_keys: torch.Tensor, top_k: int
) -> torch.Tensor:
    """Inference readout: per query, a softmax over its ``top_k`` best memory positions.

    The plain form of the runtime's read (``eamstcn.runtime.readout``, which never builds
    the dense weight matrix); the exporter's INT8 calibration runs this one.

    Args:
        memory_keys: (1, Ck, N); memory_values: (K, Cv, N); query_keys: (1, Ck, M);
        top_k: positions kept per query (clamped to N; N keeps all: :func:`softmax_readout`).
    Returns:
        (K, Cv, M) readout; weights outside each query's top k are 0.
    """
    scores = affinity(memory_keys.float(), query_keys.float())[0]  # (N, M), float32 (an fp16 |k|^2 overflows)
    kept, positions = scores.topk(min(top_k, scores.shape[0]), dim=0)  # (k, M)
    weights = torch.zeros_like(scores).scatter_(0, positions, torch.softmax(kept, dim=0))  # (N, M)
    return memory_values @ weights.to(memory_values.dtype)

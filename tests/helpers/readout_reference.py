"""A second, dense way to compute the top-k read: the reference ``runtime/readout.py`` is tested against."""

from __future__ import annotations

import math

import torch

from eamstcn.ops import affinity


def dense_readout(
    memory_keys: torch.Tensor,
    memory_values: torch.Tensor,
    query_key: torch.Tensor,
    valid: torch.Tensor,
    top_k: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The top-k read with every weight materialised densely.

    Built differently on purpose: :func:`eamstcn.ops.affinity` in (N, M), top-k over the
    memory axis, softmax over a -inf-masked dense matrix. Takes keys ``(Ck, N)``, values
    ``(K, N, Cv)``, a query ``(Ck, M)`` and ``valid`` (N,) bool like
    :func:`eamstcn.runtime.readout.topk_readout`; returns ``(readout (K, Cv, M), position
    weight (N,))``.
    """
    scores = affinity(memory_keys.unsqueeze(0), query_key.unsqueeze(0))[0]  # (N, M)
    scores = scores.masked_fill(~valid.unsqueeze(1), -math.inf)
    k = min(top_k, scores.shape[0])
    kept = torch.zeros_like(scores, dtype=torch.bool).scatter_(0, scores.topk(k, dim=0).indices, True)
    weights = torch.softmax(scores.masked_fill(~kept, -math.inf), dim=0).nan_to_num(0.0)  # (N, M)
    return memory_values.transpose(1, 2) @ weights.to(memory_values.dtype), weights.sum(dim=1)


def position_weight(weights: torch.Tensor, indices: torch.Tensor, num_memory: int) -> torch.Tensor:
    """(N,) weight mass each memory position received, from a read's ``weights`` and
    ``indices`` (both (M, k))."""
    return torch.zeros(num_memory, dtype=weights.dtype, device=weights.device).index_add_(0, indices.view(-1), weights.view(-1))

"""Top-k memory readout as pure tensor functions (DESIGN section 3).

Layout, chosen for speed: memory keys are ``(Ck, N)`` and values ``(K, Cv, N)`` with
N = frames * h*w, the layout of :func:`eamstcn.ops.affinity`; a query is ``(Ck, M)``.
The affinity is built transposed, ``(M, N)``, so that top-k runs along the contiguous
axis (about twice as fast as along the memory axis, see GPU.md). Its buffer is then
reused for the dense top-k weights, so a read needs one ``(M, N)`` buffer, not two, and
the readout is a single matmul whose cost does not grow with the number of objects the
way a gather of ``(K, Cv, M, k)`` would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from eamstcn.ops import affinity


@dataclass(frozen=True)
class ReadoutBuffers:
    """Work buffers of one :func:`topk_readout` shape, allocated once and reused.

    ``affinity`` (M, N) holds the affinity, then the dense top-k weights;
    ``top_values``/``top_indices`` (M, k); ``row_max``/``row_sum`` (M, 1);
    ``bias`` (N,) masked |k|^2; ``position_weight`` (N,) weight mass per memory position.
    """

    affinity: torch.Tensor
    top_values: torch.Tensor
    top_indices: torch.Tensor
    row_max: torch.Tensor
    row_sum: torch.Tensor
    bias: torch.Tensor
    position_weight: torch.Tensor
    masked: torch.Tensor  # 0-d +inf: torch.where(..., out=) needs a tensor, not a float

    @classmethod
    def allocate(
        cls,
        num_memory: int,
        num_queries: int,
        top_k: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> ReadoutBuffers:
        """Buffers for N = ``num_memory`` positions, M = ``num_queries``, k = min(top_k, N)."""
        k = min(top_k, num_memory)
        opts = {"device": device, "dtype": dtype}
        return cls(
            affinity=torch.empty(num_queries, num_memory, **opts),
            top_values=torch.empty(num_queries, k, **opts),
            top_indices=torch.empty(num_queries, k, device=device, dtype=torch.int64),
            row_max=torch.empty(num_queries, 1, **opts),
            row_sum=torch.empty(num_queries, 1, **opts),
            bias=torch.empty(num_memory, **opts),
            position_weight=torch.empty(num_memory, **opts),
            masked=torch.tensor(math.inf, **opts),
        )

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in vars(self).values())


def topk_readout(
    memory_keys: torch.Tensor,
    memory_values: torch.Tensor,
    query_key: torch.Tensor,
    valid: torch.Tensor,
    top_k: int,
    *,
    key_sq_norm: torch.Tensor | None = None,
    buffers: ReadoutBuffers | None = None,
    out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Read memory for each query position through its ``top_k`` most similar positions.

    S_ij = (2 k_i . q_j - |k_i|^2) / sqrt(Ck); per query j, the k = min(top_k, N) largest
    S_ij over valid i get a max-subtracted softmax, every other position weight 0.

    Args:
        memory_keys: (Ck, N).
        memory_values: (K, Cv, N).
        query_key: (Ck, M).
        valid: (N,) bool; invalid positions get S = -inf and weight exactly 0.
        top_k: positions kept per query (clamped to N).
        key_sq_norm: optional (N,) precomputed |k_i|^2 (the bank keeps it per slot).
        buffers: optional :class:`ReadoutBuffers` for this (N, M, k) and dtype.
        out: optional (K, Cv, M) contiguous output.
    Returns:
        ``(readout (K, Cv, M), position_weight (N,))``: the weight mass each memory
        position received, summed over queries (sums to M; the bank's usage signal).
        Both may be views of ``buffers``/``out``, overwritten by the next call.

    A query with no valid position reads zeros instead of NaN. In fp16, |k|^2 and
    2 k.q must stay below 65504 (key norms up to about 180) or the affinity saturates.
    """
    key_dim, num_memory = memory_keys.shape
    num_objects, value_dim, _ = memory_values.shape
    num_queries = query_key.shape[1]
    k = min(top_k, num_memory)
    if buffers is None:
        buffers = ReadoutBuffers.allocate(num_memory, num_queries, top_k, device=memory_keys.device, dtype=memory_keys.dtype)
    elif buffers.affinity.shape != (num_queries, num_memory) or buffers.top_values.shape[1] != k:
        raise ValueError(
            f"buffers are for (M, N, k) = ({buffers.affinity.shape[0]}, {buffers.affinity.shape[1]}, "
            f"{buffers.top_values.shape[1]}), got ({num_queries}, {num_memory}, {k})"
        )
    if out is None:
        out = torch.empty(num_objects, value_dim, num_queries, device=memory_values.device, dtype=memory_values.dtype)
    if key_sq_norm is None:
        key_sq_norm = memory_keys.pow(2).sum(dim=0)

    # ops.affinity computes the same S as (N, M) into a new tensor; here it is one addmm,
    # transposed, into the preallocated buffer. A masked bias of +inf turns S into -inf
    # inside that addmm: masking costs no extra pass over (M, N).
    torch.where(valid, key_sq_norm, buffers.masked, out=buffers.bias)
    scale = 1.0 / math.sqrt(key_dim)
    aff = buffers.affinity
    torch.addmm(buffers.bias, query_key.t(), memory_keys, beta=-scale, alpha=2.0 * scale, out=aff)  # (M, N)

    values, indices = buffers.top_values, buffers.top_indices
    torch.topk(aff, k, dim=1, largest=True, sorted=True, out=(values, indices))

    # Softmax over the k kept values with explicit max subtraction (the unshifted exp is
    # NaN in fp16). Sorted top-k puts the row maximum in column 0. Clamping it keeps a row
    # whose values are all -inf (nothing valid) finite, and clamping the sum makes that
    # row's weights 0 rather than 0/0.
    finfo = torch.finfo(values.dtype)
    torch.clamp(values[:, :1], min=finfo.min, out=buffers.row_max)
    values.sub_(buffers.row_max).exp_()
    torch.sum(values, dim=1, keepdim=True, out=buffers.row_sum)
    values.div_(buffers.row_sum.clamp_(min=finfo.tiny))

    weights = aff.zero_().scatter_(1, indices, values)  # (M, N), reuses the affinity buffer
    rows = num_objects * value_dim
    torch.mm(memory_values.reshape(rows, num_memory), weights.t(), out=out.view(rows, num_queries))
    torch.sum(weights, dim=0, out=buffers.position_weight)
    return out, buffers.position_weight


def dense_readout(
    memory_keys: torch.Tensor,
    memory_values: torch.Tensor,
    query_key: torch.Tensor,
    valid: torch.Tensor,
    top_k: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference for tests: the same readout with every weight materialised densely.

    Built differently on purpose: :func:`eamstcn.ops.affinity` in (N, M), top-k over
    the memory axis, softmax over a -inf-masked dense matrix. Shapes as :func:`topk_readout`.
    """
    scores = affinity(memory_keys.unsqueeze(0), query_key.unsqueeze(0))[0]  # (N, M)
    scores = scores.masked_fill(~valid.unsqueeze(1), -math.inf)
    k = min(top_k, scores.shape[0])
    kept = torch.zeros_like(scores, dtype=torch.bool).scatter_(0, scores.topk(k, dim=0).indices, True)
    weights = torch.softmax(scores.masked_fill(~kept, -math.inf), dim=0).nan_to_num(0.0)  # (N, M)
    return memory_values @ weights, weights.sum(dim=1)

"""Top-k memory readout as pure tensor functions (docs/MEMORY.md), without a dense matrix.

Layout: memory keys ``(Ck, N)`` in float32, values position-major ``(K, N, Cv)`` in the
engines' dtype, a query ``(Ck, M)``; N = frames * h*w memory positions, M = h*w queries.

A read is three steps, each into preallocated buffers:

1. :func:`topk_weights`: the affinity ``(M, N)`` in float32 (one addmm; invalid positions
   get -inf through a +inf bias), top-k along its contiguous axis, and a max-subtracted
   softmax over the k kept values -> weights ``(M, k)`` and indices ``(M, k)``.
2. :func:`gather_readout`: per object, gather the k value rows of each query and take
   their weighted sum: ``M*k*Cv`` multiply-adds instead of the ``N*M*Cv`` of a dense
   product with a mostly-zero weight matrix.
3. :func:`slot_mass` (only when eviction uses it): the weight each memory frame received.

Key norms, affinities and the softmax stay in float32 whatever the engines' dtype: in
fp16 a squared key norm overflows past 65504 (a key norm of 256) and the slot would
silently vanish from every read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch


@dataclass(frozen=True)
class ReadoutBuffers:
    """Work buffers of one read shape (N, M, k, Cv, max objects), allocated once.

    ``affinity`` (M, N) fp32; ``weights`` (M, k) fp32 (top-k scores, then softmax
    weights); ``indices`` (M, k) int64; ``row_max``/``row_sum`` (M, 1) fp32; ``bias``
    (N,) fp32 masked |k|^2; ``query`` (Ck, M) fp32 copy of a lower-precision query;
    ``weights_cast`` (M, 1, k) in the values' dtype; ``gathered`` (M*k, Cv) and ``product``
    (M, 1, Cv) in the values' dtype, reused object after object; ``masked`` 0-d +inf.
    """

    affinity: torch.Tensor
    weights: torch.Tensor
    indices: torch.Tensor
    row_max: torch.Tensor
    row_sum: torch.Tensor
    bias: torch.Tensor
    query: torch.Tensor
    weights_cast: torch.Tensor
    gathered: torch.Tensor
    product: torch.Tensor
    masked: torch.Tensor  # torch.where(..., out=) needs a tensor, not a float
    # Two-stage top-k (see _topk_by_chunks): chunk length c (1 = off), per-chunk maxima
    # (M, N/c), the best chunks (M, k), candidate positions (M, k, c) and scores
    # (M, k*c), the winners' places among the candidates (M, k), 0..c-1 and its multiple.
    chunk: int
    chunk_max: torch.Tensor
    chunk_scores: torch.Tensor
    chunk_index: torch.Tensor
    candidates: torch.Tensor
    candidate_scores: torch.Tensor
    winners: torch.Tensor
    offsets: torch.Tensor
    steps: torch.Tensor

    @classmethod
    def allocate(
        cls,
        num_memory: int,
        num_queries: int,
        top_k: int,
        *,
        key_dim: int,
        value_dim: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        chunk_divides: int | None = None,
        dense: bool = True,
    ) -> ReadoutBuffers:
        """Buffers for N = ``num_memory``, M = ``num_queries``, k = min(top_k, N), values
        of ``value_dim`` channels in ``dtype`` (keys and scores are always float32).

        ``chunk_divides``: a length every read's N is a multiple of (the bank passes its
        positions per frame, so reads of fewer frames can use the two-stage top-k too);
        default N. ``dense=False``: no (M, N) affinity and no top-k or gather work
        buffers (the fused Triton read needs only query, bias, weights and indices);
        :func:`topk_weights` refuses such buffers."""
        if not dense:
            full = cls.allocate(1, num_queries, 1, key_dim=key_dim, value_dim=1, device=device, dtype=dtype)
            k = min(top_k, num_memory)
            return replace(
                full,
                weights=torch.empty(num_queries, k, device=device, dtype=torch.float32),
                indices=torch.empty(num_queries, k, device=device, dtype=torch.int64),
                bias=torch.empty(num_memory, device=device, dtype=torch.float32),
                affinity=torch.empty(0, 0, device=device, dtype=torch.float32),
            )
        k = min(top_k, num_memory)
        fp32 = {"device": device, "dtype": torch.float32}
        int64 = {"device": device, "dtype": torch.int64}
        values = {"device": device, "dtype": dtype}
        chunk = _chunk_length(chunk_divides or num_memory, num_memory, k)
        return cls(
            affinity=torch.empty(num_queries, num_memory, **fp32),
            weights=torch.empty(num_queries, k, **fp32),
            indices=torch.empty(num_queries, k, device=device, dtype=torch.int64),
            row_max=torch.empty(num_queries, 1, **fp32),
            row_sum=torch.empty(num_queries, 1, **fp32),
            bias=torch.empty(num_memory, **fp32),
            query=torch.empty(key_dim, num_queries, **fp32),
            weights_cast=torch.empty(num_queries, 1, k, **values),
            gathered=torch.empty(num_queries * k, value_dim, **values),
            product=torch.empty(num_queries, 1, value_dim, **values),
            masked=torch.tensor(math.inf, **fp32),
            chunk=chunk,
            chunk_max=torch.empty(num_queries, num_memory // chunk if chunk > 1 else 1, **fp32),
            chunk_scores=torch.empty(num_queries, k if chunk > 1 else 1, **fp32),
            chunk_index=torch.empty(num_queries, k if chunk > 1 else 1, **int64),
            candidates=torch.empty(num_queries, k if chunk > 1 else 1, chunk, **int64),
            candidate_scores=torch.empty(num_queries, k * chunk if chunk > 1 else 1, **fp32),
            winners=torch.empty(num_queries, k if chunk > 1 else 1, **int64),
            offsets=torch.arange(chunk, **int64),
            steps=torch.empty(chunk, **int64),
        )

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in vars(self).values() if isinstance(t, torch.Tensor))

    @property
    def shape(self) -> tuple[int, int, int]:
        """(M, N, k)."""
        return (self.query.shape[1], self.bias.shape[0], self.weights.shape[1])

    @property
    def dense(self) -> bool:
        """Whether these buffers hold the (M, N) affinity the torch read needs."""
        return self.affinity.numel() > 0


def _chunk_length(divides: int, num_memory: int, k: int) -> int:
    """The chunk length c for the two-stage top-k: a divisor of ``divides`` near
    sqrt(N / k) / 2, at least 4; 1 when none suits (plain top-k). Measured on a CPU:
    the top-k over k*c candidates costs more per element than the one over N/c maxima,
    hence below the balance point sqrt(N / k)."""
    target = math.sqrt(num_memory / max(k, 1)) / 2
    best = 1
    for c in range(4, min(divides, 64) + 1):
        if divides % c == 0 and abs(c - target) < abs(best - target):
            best = c
    return best if best >= 4 and num_memory // best >= 4 * k else 1


def _topk_by_chunks(affinity: torch.Tensor, buffers: ReadoutBuffers) -> bool:
    """Exact top-k of each row of ``affinity`` (M, N) into ``buffers.weights``/``indices``
    in two cheap stages, when the buffers' chunk length c divides N; False otherwise.

    Split each row into N/c chunks of c positions (chunk g: positions g, g + N/c, ...,
    strided so that the max over a chunk is a contiguous, vectorised reduction); take
    the k chunks with the largest maxima: the k best scores lie among their k*c scores.
    (Each chunk holding one of the k best has a maximum >= the k-th best score; at most
    k chunks do, and they outrank the rest.) Ties may pick other positions of equal score.
    """
    chunk = buffers.chunk
    num_queries, num_memory = affinity.shape
    k = buffers.weights.shape[1]
    if chunk == 1 or num_memory % chunk or num_memory // chunk < k:
        return False
    groups = num_memory // chunk
    chunk_max = buffers.chunk_max.view(-1)[: num_queries * groups].view(num_queries, groups)
    torch.amax(affinity.view(num_queries, chunk, groups), dim=1, out=chunk_max)
    torch.topk(chunk_max, k, dim=1, sorted=False, out=(buffers.chunk_scores, buffers.chunk_index))
    torch.mul(buffers.offsets, groups, out=buffers.steps)  # chunk g holds g + j * N/c
    torch.add(buffers.chunk_index.unsqueeze(2), buffers.steps, out=buffers.candidates)
    candidates = buffers.candidates.view(num_queries, k * chunk)
    torch.gather(affinity, 1, candidates, out=buffers.candidate_scores)
    torch.topk(buffers.candidate_scores, k, dim=1, largest=True, sorted=True, out=(buffers.weights, buffers.winners))
    torch.gather(candidates, 1, buffers.winners, out=buffers.indices)
    return True


def topk_weights(
    memory_keys: torch.Tensor,
    key_sq_norm: torch.Tensor,
    valid: torch.Tensor,
    query_key: torch.Tensor,
    buffers: ReadoutBuffers,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per query, the k most similar valid memory positions and their softmax weights.

    S_ij = (2 k_i . q_j - |k_i|^2) / sqrt(Ck); per query j, the k largest S_ij over valid
    i get a max-subtracted softmax. A query with fewer than k valid positions gives the
    rest weight exactly 0; a query with none reads zeros (weights all 0, not NaN).

    Args:
        memory_keys: (Ck, N) float32.
        key_sq_norm: (N,) float32 |k_i|^2.
        valid: (N,) bool.
        query_key: (Ck, M), any float dtype (copied to float32 when it is not).
        buffers: :class:`ReadoutBuffers` of this (M, k) and at least N memory positions
            (a read of fewer positions uses the front of its buffers).
    Returns:
        ``(weights (M, k) float32, indices (M, k) int64)``: views of ``buffers``,
        overwritten by the next call. Weights are sorted, largest first.
    """
    if not buffers.dense:
        raise ValueError("these readout buffers were allocated for the fused read (dense=False): no affinity")
    key_dim, num_memory = memory_keys.shape
    num_queries = buffers.affinity.shape[0]
    if query_key.dtype != torch.float32:
        query_key = buffers.query.copy_(query_key)
    # Contiguous fronts of the buffers when fewer positions than their size are read.
    affinity = buffers.affinity.view(-1)[: num_queries * num_memory].view(num_queries, num_memory)
    bias = buffers.bias[:num_memory]
    # A masked bias of +inf turns S into -inf inside the addmm: masking costs no extra
    # pass over (M, N). The affinity is built transposed so top-k runs along the
    # contiguous axis (about twice as fast as along the memory axis, see docs/GPU.md).
    torch.where(valid, key_sq_norm, buffers.masked, out=bias)
    scale = 1.0 / math.sqrt(key_dim)
    torch.addmm(bias, query_key.t(), memory_keys, beta=-scale, alpha=2.0 * scale, out=affinity)
    values, indices = buffers.weights, buffers.indices
    if not _topk_by_chunks(affinity, buffers):
        torch.topk(affinity, values.shape[1], dim=1, largest=True, sorted=True, out=(values, indices))

    # Softmax over the k kept values with explicit max subtraction (the unshifted exp
    # overflows). Sorted top-k puts the row maximum in column 0. Clamping it keeps a row
    # whose values are all -inf (nothing valid) finite, and clamping the sum makes that
    # row's weights 0 rather than 0/0.
    finfo = torch.finfo(torch.float32)
    torch.clamp(values[:, :1], min=finfo.min, out=buffers.row_max)
    values.sub_(buffers.row_max).exp_()
    torch.sum(values, dim=1, keepdim=True, out=buffers.row_sum)
    values.div_(buffers.row_sum.clamp_(min=finfo.tiny))
    return values, indices


def gather_readout(
    memory_values: torch.Tensor,
    weights: torch.Tensor,
    indices: torch.Tensor,
    out: torch.Tensor,
    buffers: ReadoutBuffers,
) -> torch.Tensor:
    """readout[o, :, j] = sum_t weights[j, t] * memory_values[o, indices[j, t], :].

    Args:
        memory_values: (K, N, Cv), rows contiguous (position-major).
        weights: (M, k) float32; indices: (M, k) int64 (from :func:`topk_weights`).
        out: (K, Cv, M), written in place (any strides).
        buffers: the read's :class:`ReadoutBuffers` (values' dtype).
    Returns:
        ``out``.
    """
    num_queries, k = weights.shape
    flat = indices.view(-1)
    weights_cast = buffers.weights_cast
    weights_cast.view(num_queries, k).copy_(weights)
    gathered = buffers.gathered.view(num_queries, k, -1)
    product = buffers.product
    for obj in range(memory_values.shape[0]):  # K is small; each pass reuses one buffer
        torch.index_select(memory_values[obj], 0, flat, out=buffers.gathered)
        torch.bmm(weights_cast, gathered, out=product)  # (M, 1, k) @ (M, k, Cv)
        out[obj].copy_(product.view(num_queries, -1).t())
    return out


def slot_mass(indices: torch.Tensor, weights: torch.Tensor, positions_per_slot: int, work: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Weight mass each memory slot (frame) received in one read.

    Args:
        indices: (M, k) int64 positions; weights: (M, k) float32.
        positions_per_slot: h*w.
        work: (M, k) int64 scratch for the slot of each index.
        out: (slots,) float32, overwritten.
    Returns:
        ``out``, summing to M when every query has a valid position.
    """
    torch.div(indices, positions_per_slot, rounding_mode="floor", out=work)
    out.zero_()
    out.index_add_(0, work.view(-1), weights.view(-1))
    return out


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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One whole read (allocating what is not given): for one-off use (the fused read's
    warm-up check) and tests; the bank calls the steps above into its own buffers.

    Args:
        memory_keys: (Ck, N) float32 (other float dtypes are converted).
        memory_values: (K, N, Cv).
        query_key: (Ck, M).
        valid: (N,) bool.
        top_k: positions kept per query (clamped to N).
    Returns:
        ``(readout (K, Cv, M), weights (M, k), indices (M, k))``.
    """
    memory_keys = memory_keys.float()
    key_dim, num_memory = memory_keys.shape
    num_objects, _, value_dim = memory_values.shape
    num_queries = query_key.shape[1]
    k = min(top_k, num_memory)
    if buffers is None:
        buffers = ReadoutBuffers.allocate(
            num_memory, num_queries, top_k, key_dim=key_dim, value_dim=value_dim, device=memory_keys.device, dtype=memory_values.dtype
        )
    elif buffers.shape != (num_queries, num_memory, k):
        raise ValueError(f"buffers are for (M, N, k) = {buffers.shape}, got ({num_queries}, {num_memory}, {k})")
    if out is None:
        out = torch.empty(num_objects, value_dim, num_queries, device=memory_values.device, dtype=memory_values.dtype)
    if key_sq_norm is None:
        key_sq_norm = memory_keys.pow(2).sum(dim=0)
    weights, indices = topk_weights(memory_keys, key_sq_norm.float(), valid, query_key, buffers)
    gather_readout(memory_values, weights, indices, out, buffers)
    return out, weights, indices


"""The memory read as one Triton kernel on CUDA: affinity, running top-k, softmax, weighted sum.

Reference and fallback: :mod:`eamstcn.runtime.readout` (the path CI runs). This kernel
computes the same thing without ever writing the (M, N) affinity to memory, so the read
stays flat as the memory grows (GPU.md: torch.topk over the memory axis is most of a
read and grows linearly with it).

Each program owns ``BLOCK_M`` query positions and walks the memory in blocks of
``BLOCK_N`` positions:

1. ``S = (2 q.k - bias) / sqrt(Ck)`` for the block with ``tl.dot`` (bias = |k|^2, +inf for
   invalid positions, so they score -inf), in float32;
2. each score is packed with its position into one int64 whose order is the score's
   (order-preserving float bits in the high word, the position in the low word), and the
   block's best ``KPAD`` are merged into the running best ``KPAD`` with ``tl.topk``;
   a block that beats no row's current k-th best is skipped;
3. after the walk: unpack, max-subtracted softmax over the best ``TOPK`` (float32), the
   weights and positions are written out (the bank's usage accounting reads them), and
   for each object the weighted sum of the ``TOPK`` gathered value rows (Cv contiguous
   values each) is accumulated in float32 and stored transposed into ``(K, Cv, M)``.

Written against Triton 3's documented language (``tl.dot``, ``tl.topk``, ``tl.join``,
``tl.reshape``); imported only on CUDA (or by tests in Triton's interpreter).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl


@triton.jit
def _pack(scores, positions):
    """fp32 scores, int positions -> int64 whose signed order is the scores' order."""
    bits = scores.to(tl.int32, bitcast=True)
    ordered = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    return (ordered.to(tl.int64) << 32) | positions.to(tl.int64)


@triton.jit
def _unpack_scores(packed):
    ordered = (packed >> 32).to(tl.int32)
    bits = tl.where(ordered < 0, ordered ^ 0x7FFFFFFF, ordered)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _fused_topk_read_kernel(
    query_ptr,  # (CK, M) float32, contiguous
    keys_ptr,  # (CK, N) float32, row stride stride_kc, columns contiguous
    bias_ptr,  # (N,) float32: |k|^2, +inf where invalid
    values_ptr,  # (K, N, CV): strides stride_vk, stride_vn, 1
    out_ptr,  # (K, CV, M): strides stride_ok, stride_oc, stride_om
    weights_ptr,  # (M, TOPK) float32, contiguous
    indices_ptr,  # (M, TOPK) int64, contiguous
    num_queries,
    num_memory,
    num_objects,
    stride_kc,
    stride_vk,
    stride_vn,
    stride_ok,
    stride_oc,
    stride_om,
    scale,
    CK: tl.constexpr,
    CV: tl.constexpr,
    TOPK: tl.constexpr,
    KPAD: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    KEYS_FP16: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < num_queries
    channels_k = tl.arange(0, CK)
    query = tl.load(query_ptr + channels_k[None, :] * num_queries + rows[:, None], mask=row_ok[:, None], other=0.0)
    if KEYS_FP16:  # keys that came from fp16 engines are exact in fp16: tensor cores, exact products
        query = query.to(tl.float16)
    slots = tl.arange(0, KPAD)
    columns = tl.arange(0, BLOCK_N)
    best = _pack(tl.full((BLOCK_M, KPAD), float("-inf"), tl.float32), tl.zeros((BLOCK_M, KPAD), tl.int32))
    for start in range(0, num_memory, BLOCK_N):
        positions = start + columns
        inside = positions < num_memory
        keys = tl.load(keys_ptr + channels_k[:, None] * stride_kc + positions[None, :], mask=inside[None, :], other=0.0)
        bias = tl.load(bias_ptr + positions, mask=inside, other=float("inf"))
        if KEYS_FP16:
            keys = keys.to(tl.float16)
        product = tl.dot(query, keys, input_precision="ieee", out_dtype=tl.float32)  # (BLOCK_M, BLOCK_N)
        scores = (2.0 * product - bias[None, :]) * scale
        packed = _pack(scores, positions)
        # The k-th best so far per row; a block that beats none of them changes nothing.
        kth = tl.min(tl.where(slots[None, :] < TOPK, best, 0x7FFFFFFFFFFFFFFF), axis=1)
        beats = tl.sum((packed > kth[:, None]).to(tl.int32), axis=1)
        if tl.max(beats, axis=0) > 0:
            candidates = tl.topk(packed, KPAD)  # (BLOCK_M, KPAD)
            merged = tl.reshape(tl.join(best, candidates), (BLOCK_M, 2 * KPAD))
            best = tl.topk(merged, KPAD)

    keep = slots[None, :] < TOPK
    scores = tl.where(keep, _unpack_scores(best), float("-inf"))
    positions = (best & 0xFFFFFFFF).to(tl.int64)
    # Max-subtracted softmax; a row with nothing valid (max -inf) gets all-zero weights.
    row_max = tl.maximum(tl.max(scores, axis=1), -3.4028234663852886e38)
    exps = tl.exp(scores - row_max[:, None])
    total = tl.maximum(tl.sum(exps, axis=1), 1.1754943508222875e-38)
    weights = exps / total[:, None]
    out_mask = row_ok[:, None] & keep
    tl.store(weights_ptr + rows[:, None] * TOPK + slots[None, :], weights, mask=out_mask)
    tl.store(indices_ptr + rows[:, None] * TOPK + slots[None, :], positions, mask=out_mask)

    channels_v = tl.arange(0, CV)
    for obj in range(num_objects):
        acc = tl.zeros((BLOCK_M, CV), tl.float32)
        for rank in tl.static_range(TOPK):
            chosen = slots[None, :] == rank
            weight = tl.sum(tl.where(chosen, weights, 0.0), axis=1)  # (BLOCK_M,)
            position = tl.sum(tl.where(chosen, positions, 0), axis=1)
            used = row_ok & (weight > 0.0)
            row = tl.load(
                values_ptr + obj * stride_vk + position[:, None] * stride_vn + channels_v[None, :],
                mask=used[:, None],
                other=0.0,
            )
            acc += weight[:, None] * row.to(tl.float32)
        tl.store(
            out_ptr + obj * stride_ok + channels_v[None, :] * stride_oc + rows[:, None] * stride_om,
            acc.to(out_ptr.dtype.element_ty),
            mask=row_ok[:, None],
        )


def _power_of_two(value: int) -> bool:
    return value > 0 and value & (value - 1) == 0


class FusedTopkRead:
    """Launches the kernel for one read shape.

    Constraints (else use the torch path): key_dim and value_dim powers of two, key_dim
    >= 16 (``tl.dot``), 1 <= top_k <= 64, at least top_k memory positions.
    """

    def __init__(self, key_dim: int, value_dim: int, top_k: int, keys_fp16: bool, block_m: int = 16) -> None:
        if not self.supports(key_dim, value_dim, top_k):
            raise ValueError(f"the fused read needs power-of-two key_dim >= 16 and value_dim, top_k <= 64; got {key_dim}, {value_dim}, {top_k}")
        self.key_dim, self.value_dim, self.top_k = key_dim, value_dim, top_k
        self.kpad = max(16, 1 << (top_k - 1).bit_length())
        self.block_n = 2 * self.kpad
        self.block_m = block_m
        self.keys_fp16 = keys_fp16

    @staticmethod
    def supports(key_dim: int, value_dim: int, top_k: int) -> bool:
        return _power_of_two(key_dim) and key_dim >= 16 and _power_of_two(value_dim) and 1 <= top_k <= 64

    def __call__(
        self,
        keys: torch.Tensor,
        bias: torch.Tensor,
        query: torch.Tensor,
        values: torch.Tensor,
        out: torch.Tensor,
        weights: torch.Tensor,
        indices: torch.Tensor,
    ) -> None:
        """keys (Ck, N) fp32 (unit column stride); bias (N,) fp32; query (Ck, M) fp32
        contiguous; values (K, N, Cv) (unit channel stride); out (K, Cv, M); weights
        (M, top_k) fp32 and indices (M, top_k) int64, contiguous. All written in place."""
        num_queries, num_memory = query.shape[1], keys.shape[1]
        if num_memory < self.top_k:
            raise ValueError(f"the fused read needs at least top_k = {self.top_k} memory positions, got {num_memory}")
        if keys.stride(1) != 1 or values.stride(2) != 1 or not query.is_contiguous():
            raise ValueError("keys need unit column stride, values unit channel stride, the query contiguous")
        grid = (triton.cdiv(num_queries, self.block_m),)
        _fused_topk_read_kernel[grid](
            query, keys, bias, values, out, weights, indices,
            num_queries, num_memory, values.shape[0],
            keys.stride(0), values.stride(0), values.stride(1), out.stride(0), out.stride(1), out.stride(2),
            1.0 / math.sqrt(self.key_dim),
            CK=self.key_dim, CV=self.value_dim, TOPK=self.top_k, KPAD=self.kpad,
            BLOCK_M=self.block_m, BLOCK_N=self.block_n, KEYS_FP16=self.keys_fp16,
        )  # fmt: skip

"""The memory read as one Triton kernel on CUDA: affinity, running top-k, softmax, weighted sum.

Reference and fallback: :mod:`eamstcn.runtime.readout` (the path CI runs). This kernel
computes the same thing without ever writing the (M, N) affinity to memory, so the read
stays flat as the memory grows (docs/GPU.md: torch.topk over the memory axis is most of a
read and grows linearly with it).

Two kernels. The memory axis is split into ``S`` ranges so that a read keeps every SM
busy (one program per 16 queries alone gives 102 programs for 132 SMs at 480x864, each
walking the whole memory serially). ``_partial_topk_kernel``, one program per
(``BLOCK_M`` queries, memory range), walks its range in blocks of ``BLOCK_N``:

1. ``S = (2 q.k - bias) / sqrt(Ck)`` for the block with ``tl.dot`` (bias = |k|^2, +inf for
   invalid positions, so they score -inf), in float32;
2. each score is packed with its position into one int64 whose order is the score's
   (order-preserving float bits in the high word, the position in the low word), and the
   block's best ``KPAD`` are merged into the running best ``KPAD`` with ``tl.topk``;
   a block that beats no row's current k-th best is skipped. Positions past the end of
   the memory enter as (-inf, position 0), like the initial fill: never out of range;
3. the range's best ``KPAD`` per query go to a small ``(M, S, KPAD)`` int64 buffer.

``_merge_read_kernel``, one program per ``BLOCK_M`` queries, merges the ``S`` partial
lists with ``tl.topk``, unpacks, takes a max-subtracted softmax over the best ``TOPK``
(float32), writes the weights and positions (clamped to the memory: the bank's usage
accounting indexes with them), and for each object accumulates the weighted sum of the
``TOPK`` gathered value rows (Cv contiguous values each) in float32, stored transposed
into ``(K, Cv, M)``. Nothing of size M x N is ever written.

Written against Triton's documented language (``tl.dot``, ``tl.topk`` (Triton >= 3.3),
``tl.join``, ``tl.reshape``); imported only on CUDA (or by tests in Triton's
interpreter). :meth:`FusedTopkRead.warm_up` compiles and checks it on a tiny read
against the torch path first; the memory bank falls back to the torch read if that fails.
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
def _partial_topk_kernel(
    query_ptr,  # (CK, M) float32, contiguous
    keys_ptr,  # (CK, N) float32, row stride stride_kc, columns contiguous
    bias_ptr,  # (N,) float32: |k|^2, +inf where invalid
    partial_ptr,  # (M, S, KPAD) int64, contiguous: each range's best, packed
    num_queries,
    num_memory,
    split_length,  # positions per range, a multiple of BLOCK_N
    num_splits,
    stride_kc,
    scale,
    CK: tl.constexpr,
    TOPK: tl.constexpr,
    KPAD: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    KEYS_FP16: tl.constexpr,
):
    pid = tl.program_id(0)
    split = tl.program_id(1)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < num_queries
    channels_k = tl.arange(0, CK)
    query = tl.load(query_ptr + channels_k[None, :] * num_queries + rows[:, None], mask=row_ok[:, None], other=0.0)
    if KEYS_FP16:  # keys that came from fp16 engines are exact in fp16: tensor cores, exact products
        query = query.to(tl.float16)
    slots = tl.arange(0, KPAD)
    columns = tl.arange(0, BLOCK_N)
    best = _pack(tl.full((BLOCK_M, KPAD), float("-inf"), tl.float32), tl.zeros((BLOCK_M, KPAD), tl.int32))
    low = split * split_length
    high = tl.minimum(low + split_length, num_memory)
    for start in range(low, high, BLOCK_N):
        positions = start + columns
        inside = positions < high
        keys = tl.load(keys_ptr + channels_k[:, None] * stride_kc + positions[None, :], mask=inside[None, :], other=0.0)
        bias = tl.load(bias_ptr + positions, mask=inside, other=float("inf"))
        if KEYS_FP16:
            keys = keys.to(tl.float16)
        product = tl.dot(query, keys, input_precision="ieee", out_dtype=tl.float32)  # (BLOCK_M, BLOCK_N)
        scores = (2.0 * product - bias[None, :]) * scale
        # Past the end: (-inf, position 0), as the initial fill, so no position >= N wins.
        packed = _pack(scores, tl.where(inside, positions, 0))
        # The k-th best so far per row; a block that beats none of them changes nothing.
        kth = tl.min(tl.where(slots[None, :] < TOPK, best, 0x7FFFFFFFFFFFFFFF), axis=1)
        beats = tl.sum((packed > kth[:, None]).to(tl.int32), axis=1)
        if tl.max(beats, axis=0) > 0:
            candidates = tl.topk(packed, KPAD)  # (BLOCK_M, KPAD)
            merged = tl.reshape(tl.join(best, candidates), (BLOCK_M, 2 * KPAD))
            best = tl.topk(merged, KPAD)
    tl.store(partial_ptr + (rows[:, None] * num_splits + split) * KPAD + slots[None, :], best, mask=row_ok[:, None])


@triton.jit
def _merge_read_kernel(
    partial_ptr,  # (M, S, KPAD) int64
    values_ptr,  # (K, N, CV): strides stride_vk, stride_vn, 1
    out_ptr,  # (K, CV, M): strides stride_ok, stride_oc, stride_om
    weights_ptr,  # (M, TOPK) float32, contiguous
    indices_ptr,  # (M, TOPK) int64, contiguous
    num_queries,
    num_memory,
    num_splits,
    num_objects,
    stride_vk,
    stride_vn,
    stride_ok,
    stride_oc,
    stride_om,
    CV: tl.constexpr,
    TOPK: tl.constexpr,
    KPAD: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < num_queries
    slots = tl.arange(0, KPAD)
    best = tl.load(partial_ptr + (rows[:, None] * num_splits) * KPAD + slots[None, :], mask=row_ok[:, None], other=0)
    for split in range(1, num_splits):
        candidates = tl.load(partial_ptr + (rows[:, None] * num_splits + split) * KPAD + slots[None, :], mask=row_ok[:, None], other=0)
        merged = tl.reshape(tl.join(best, candidates), (BLOCK_M, 2 * KPAD))
        best = tl.topk(merged, KPAD)

    keep = slots[None, :] < TOPK
    scores = tl.where(keep, _unpack_scores(best), float("-inf"))
    # Clamped: whatever a lane holds, the usage accounting indexes slots with it.
    positions = tl.minimum(tl.maximum((best & 0xFFFFFFFF).to(tl.int64), 0), num_memory - 1)
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


#: The oldest Triton whose language has ``tl.topk``.
MIN_TRITON = (3, 3)


def triton_problem() -> str | None:
    """Why this Triton cannot run the kernels (too old, no ``tl.topk``), or None."""
    parts = []
    for part in triton.__version__.split(".")[:2]:
        digits = "".join(c for c in part if c.isdigit())
        parts.append(int(digits or 0))
    if tuple(parts) < MIN_TRITON or not hasattr(tl, "topk"):
        return f"needs Triton >= {MIN_TRITON[0]}.{MIN_TRITON[1]} (tl.topk), found {triton.__version__}"
    return None


class FusedTopkRead:
    """Launches the two kernels for one read shape.

    Constraints (else use the torch path): key_dim and value_dim powers of two, key_dim
    >= 16 (``tl.dot``), 1 <= top_k <= 64, at least top_k memory positions.

    Args:
        programs: programs to aim for per read (queries x memory ranges); default four
            per SM of the current CUDA device (or 16 without one).
        max_splits: most memory ranges a read is split into (sizes :meth:`partial_buffer`).
    """

    def __init__(self, key_dim: int, value_dim: int, top_k: int, keys_fp16: bool, block_m: int = 16,
                 programs: int | None = None, max_splits: int = 32) -> None:  # fmt: skip
        if not self.supports(key_dim, value_dim, top_k):
            raise ValueError(f"the fused read needs power-of-two key_dim >= 16 and value_dim, top_k <= 64; got {key_dim}, {value_dim}, {top_k}")
        self.key_dim, self.value_dim, self.top_k = key_dim, value_dim, top_k
        self.kpad = max(16, 1 << (top_k - 1).bit_length())
        self.block_n = 2 * self.kpad
        self.block_m = block_m
        self.keys_fp16 = keys_fp16
        if programs is None:
            programs = 4 * torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count if torch.cuda.is_available() else 16
        self.programs = programs
        self.max_splits = max_splits

    @staticmethod
    def supports(key_dim: int, value_dim: int, top_k: int) -> bool:
        return _power_of_two(key_dim) and key_dim >= 16 and _power_of_two(value_dim) and 1 <= top_k <= 64

    def splits(self, num_queries: int, num_memory: int) -> tuple[int, int]:
        """(ranges, positions per range) for a read: enough programs to fill the device,
        ranges a multiple of BLOCK_N long. Host arithmetic on shapes only."""
        row_blocks = triton.cdiv(num_queries, self.block_m)
        blocks = triton.cdiv(num_memory, self.block_n)
        wanted = max(1, min(triton.cdiv(self.programs, row_blocks), blocks, self.max_splits))
        length = triton.cdiv(blocks, wanted) * self.block_n
        return triton.cdiv(num_memory, length), length

    def partial_buffer(self, num_queries: int, device: torch.device | str) -> torch.Tensor:
        """The (M, max_splits, KPAD) int64 buffer of partial top-k lists (allocate once)."""
        return torch.empty(num_queries, self.max_splits, self.kpad, device=device, dtype=torch.int64)

    def __call__(
        self,
        keys: torch.Tensor,
        bias: torch.Tensor,
        query: torch.Tensor,
        values: torch.Tensor,
        out: torch.Tensor,
        weights: torch.Tensor,
        indices: torch.Tensor,
        partial: torch.Tensor | None = None,
    ) -> None:
        """keys (Ck, N) fp32 (unit column stride); bias (N,) fp32; query (Ck, M) fp32
        contiguous; values (K, N, Cv) (unit channel stride); out (K, Cv, M); weights
        (M, top_k) fp32 and indices (M, top_k) int64, contiguous; partial from
        :meth:`partial_buffer` (allocated here when not given). All written in place."""
        num_queries, num_memory = query.shape[1], keys.shape[1]
        if num_memory < self.top_k:
            raise ValueError(f"the fused read needs at least top_k = {self.top_k} memory positions, got {num_memory}")
        if keys.stride(1) != 1 or values.stride(2) != 1 or not query.is_contiguous():
            raise ValueError("keys need unit column stride, values unit channel stride, the query contiguous")
        if partial is None:
            partial = self.partial_buffer(num_queries, keys.device)
        num_splits, length = self.splits(num_queries, num_memory)
        assert partial.shape[0] >= num_queries and partial.shape[1] >= num_splits and partial.shape[2] == self.kpad
        partial = partial.view(-1)[: num_queries * num_splits * self.kpad]  # (M, S, KPAD), contiguous
        row_blocks = triton.cdiv(num_queries, self.block_m)
        _partial_topk_kernel[(row_blocks, num_splits)](
            query, keys, bias, partial,
            num_queries, num_memory, length, num_splits, keys.stride(0),
            1.0 / math.sqrt(self.key_dim),
            CK=self.key_dim, TOPK=self.top_k, KPAD=self.kpad, BLOCK_M=self.block_m, BLOCK_N=self.block_n, KEYS_FP16=self.keys_fp16,
        )  # fmt: skip
        _merge_read_kernel[(row_blocks,)](
            partial, values, out, weights, indices,
            num_queries, num_memory, num_splits, values.shape[0],
            values.stride(0), values.stride(1), out.stride(0), out.stride(1), out.stride(2),
            CV=self.value_dim, TOPK=self.top_k, KPAD=self.kpad, BLOCK_M=self.block_m,
        )  # fmt: skip

    def warm_up(self, device: torch.device | str) -> None:
        """Compile both kernels for this key/value size and check one small read (a tail
        block, invalid positions, two memory ranges) against the torch read; raises on
        any failure. Call outside steady frames: the first compile takes seconds."""
        from eamstcn.runtime.readout import topk_readout

        generator = torch.Generator().manual_seed(0)
        num_memory = 2 * self.block_n + 5
        queries = self.block_m + 3
        keys = (4.0 * torch.randn(self.key_dim, num_memory, generator=generator)).half().float()
        query = keys[:, :queries] + 0.25 * torch.randn(self.key_dim, queries, generator=generator).half().float()
        dtype = torch.float16 if self.keys_fp16 else torch.float32
        values = torch.randn(1, num_memory, self.value_dim, generator=generator).to(dtype)
        valid = torch.arange(num_memory) % 7 != 3
        keys, query, values, valid = (t.to(device) for t in (keys, query.contiguous(), values, valid))
        sq_norm = keys.pow(2).sum(0)
        expected, expected_weights, _ = topk_readout(keys, values, query, valid, self.top_k, key_sq_norm=sq_norm)
        out = torch.empty_like(expected)
        weights = torch.empty(queries, self.top_k, device=device)
        indices = torch.empty(queries, self.top_k, device=device, dtype=torch.int64)
        bias = torch.where(valid, sq_norm, torch.tensor(math.inf, device=device))
        partial = torch.empty(queries, 2, self.kpad, device=device, dtype=torch.int64)
        length = self.block_n + self.block_n  # two ranges whatever the device's size
        saved, self.programs, self.max_splits = (self.programs, self.max_splits), 2 * triton.cdiv(queries, self.block_m), 2
        try:
            assert self.splits(queries, num_memory) == (2, length)
            self(keys, bias, query, values, out, weights, indices, partial)
        finally:
            self.programs, self.max_splits = saved
        if not (torch.allclose(out.float(), expected.float(), atol=2e-3, rtol=2e-3) and torch.allclose(weights, expected_weights, atol=1e-4)):
            raise RuntimeError("the fused read disagrees with the torch read on the warm-up read")
        if int(indices.min()) < 0 or int(indices.max()) >= num_memory:
            raise RuntimeError("the fused read wrote positions outside the memory")

"""The fused Triton read checked against the torch read, on a device of the caller's choice.

Shared by ``tests/test_readout_triton.py``'s CUDA tests and its runs in Triton's
interpreter (a subprocess, which imports this module).
"""

from __future__ import annotations

import torch

from eamstcn.runtime.config import MemoryConfig
from eamstcn.runtime.memory import MemoryBank
from eamstcn.runtime.readout import topk_readout


def compare_fused_with_torch(device: str, key_dim: int, value_dim: int, queries: int, memory: int, objects: int,
                             values_dtype: torch.dtype, seed: int = 0) -> None:  # fmt: skip
    """Random keys near the queries, some positions invalid, one query row matching nothing."""
    from eamstcn.runtime.readout_triton import FusedTopkRead

    generator = torch.Generator().manual_seed(seed)
    keys = 4.0 * torch.randn(key_dim, memory, generator=generator)
    if values_dtype == torch.float16:
        keys = keys.half().float()  # what an fp16 engine's keys are
    query = keys[:, torch.randint(0, memory, (queries,), generator=generator)] + 0.5 * torch.randn(key_dim, queries, generator=generator)
    if values_dtype == torch.float16:
        query = query.half().float()
    values = torch.randn(objects, memory, value_dim, generator=generator).to(values_dtype)
    valid = torch.rand(memory, generator=generator) > 0.25
    keys, query, values, valid = (t.to(device) for t in (keys, query, values, valid))
    sq_norm = keys.pow(2).sum(0)
    expected, expected_weights, expected_indices = topk_readout(keys, values, query, valid, 20, key_sq_norm=sq_norm)

    bias = torch.where(valid, sq_norm, torch.tensor(float("inf"), device=device))
    out = torch.full((objects, value_dim, queries), float("nan"), device=device, dtype=values_dtype)
    weights = torch.empty(queries, 20, device=device)
    indices = torch.empty(queries, 20, device=device, dtype=torch.int64)
    FusedTopkRead(key_dim, value_dim, 20, keys_fp16=values_dtype == torch.float16)(keys, bias, query.contiguous(), values, out, weights, indices)
    tolerance = 2e-3 if values_dtype == torch.float16 else 1e-5
    torch.testing.assert_close(out.float(), expected.float(), atol=tolerance, rtol=tolerance)
    torch.testing.assert_close(weights, expected_weights, atol=1e-5, rtol=1e-5)
    # Same positions, in the same (score) order up to exact ties.
    assert (indices.sort(dim=1).values == expected_indices.sort(dim=1).values).float().mean() > 0.999


def nothing_valid_reads_zeros(device: str) -> None:
    """A bank with the fused read whose positions are all invalid reads zeros, not NaN."""
    config = MemoryConfig(capacity=2, top_k=20, read_kernel="triton")
    bank = MemoryBank(config, 16, 16, 4, 8, 1, device=device)
    assert bank.read_kernel == "triton"
    bank.add(torch.randn(1, 16, 4, 8, device=device), torch.randn(1, 16, 4, 8, device=device))
    bank._valid.zero_()  # noqa: SLF001 - a read with nothing valid must give zeros, not NaN
    assert bool((bank.read(torch.randn(1, 16, 4, 8, device=device)) == 0).all())


CASES = [
    # key_dim, value_dim, queries, memory positions, objects, values dtype
    (16, 16, 37, 150, 2, torch.float32),  # neither axis a multiple of a block
    (64, 32, 16, 320, 1, torch.float32),
    (16, 16, 20, 96, 3, torch.float16),
]

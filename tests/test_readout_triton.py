"""The fused Triton read against the torch read (its reference and fallback).

On CUDA (marked gpu, skipped here). Without CUDA, the same comparisons run in Triton's
interpreter on the CPU, in a subprocess (the interpreter is chosen when kernels are
defined); slow, so marked slow: CI runs the torch path only.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from eamstcn.runtime.config import MemoryConfig
from eamstcn.runtime.memory import MemoryBank
from eamstcn.runtime.readout import topk_readout

triton = pytest.importorskip("triton")


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


def _nothing_valid_reads_zeros(device: str) -> None:
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


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("case", [*CASES, (64, 512, 1620, 16 * 1620, 2, torch.float16), (64, 512, 1620, 16 * 1620, 1, torch.float32)])
def test_fused_read_matches_torch_on_cuda(case) -> None:
    compare_fused_with_torch("cuda", *case)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bank_reads_the_same_with_both_kernels_on_cuda() -> None:
    generator = torch.Generator().manual_seed(3)
    banks = {kernel: MemoryBank(MemoryConfig(capacity=4, read_kernel=kernel), 64, 128, 15, 27, 2, num_objects=2, device="cuda", dtype=torch.float16)
             for kernel in ("torch", "triton")}  # fmt: skip
    assert banks["triton"].read_kernel == "triton"
    for frame in range(7):
        key = torch.randn(1, 64, 15, 27, generator=generator).half().cuda()
        value = torch.randn(2, 128, 15, 27, generator=generator).half().cuda()
        reads = {}
        for kernel, bank in banks.items():
            bank.add(key, value)
            reads[kernel] = bank.read(key + 0.1).float()
        torch.testing.assert_close(reads["triton"], reads["torch"], atol=2e-3, rtol=2e-3)
        torch.testing.assert_close(banks["triton"]._usage, banks["torch"]._usage, atol=1e-3, rtol=1e-4)  # noqa: SLF001
    _nothing_valid_reads_zeros("cuda")


@pytest.mark.slow
def test_fused_read_matches_torch_in_the_triton_interpreter() -> None:
    script = textwrap.dedent(
        """
        import torch
        from tests.test_readout_triton import CASES, compare_fused_with_torch, _nothing_valid_reads_zeros
        for case in CASES:
            compare_fused_with_torch("cpu", *case)
        _nothing_valid_reads_zeros("cpu")
        print("ok")
        """
    )
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]

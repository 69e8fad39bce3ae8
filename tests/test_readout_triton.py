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
from tests.helpers.fused_read import CASES, compare_fused_with_torch, nothing_valid_reads_zeros

triton = pytest.importorskip("triton")


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
    nothing_valid_reads_zeros("cuda")


@pytest.mark.slow
def test_fused_read_matches_torch_in_the_triton_interpreter() -> None:
    script = textwrap.dedent(
        """
        import torch
        from tests.helpers.fused_read import CASES, compare_fused_with_torch, nothing_valid_reads_zeros
        for case in CASES:
            compare_fused_with_torch("cpu", *case)
        nothing_valid_reads_zeros("cpu")
        print("ok")
        """
    )
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]


# --------------------------------------------------------------------------- split memory, tails, fallback

_INTERPRETED = textwrap.dedent(
    """
    import torch
    from eamstcn.runtime.config import MemoryConfig
    from eamstcn.runtime.memory import MemoryBank
    from eamstcn.runtime.readout import topk_readout
    from eamstcn.runtime.readout_triton import FusedTopkRead

    # The guarded warm-up: a tail block, invalid positions, two memory ranges merged.
    FusedTopkRead(16, 16, 4, keys_fp16=False).warm_up("cpu")

    # Fewer valid positions than top_k in a memory that ends inside a block: every
    # position written stays inside the memory (the usage accounting indexes with them).
    read = FusedTopkRead(16, 16, 4, keys_fp16=False, programs=6, max_splits=3)
    memory, queries = 70, 5
    assert read.splits(queries, memory)[0] == 3
    generator = torch.Generator().manual_seed(1)
    keys, query = torch.randn(16, memory, generator=generator), torch.randn(16, queries, generator=generator)
    values = torch.randn(1, memory, 16, generator=generator)
    valid = torch.zeros(memory, dtype=torch.bool)
    valid[[3, 40]] = True
    bias = torch.where(valid, keys.pow(2).sum(0), torch.tensor(float("inf")))
    out, weights = torch.empty(1, 16, queries), torch.empty(queries, 4)
    indices = torch.full((queries, 4), -1, dtype=torch.int64)
    read(keys, bias, query, values, out, weights, indices)
    assert int(indices.min()) >= 0 and int(indices.max()) < memory, indices
    expected, _, _ = topk_readout(keys, values, query, valid, 4)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)

    # The bank with the fused read holds no dense (M, N) affinity; usage accounting runs.
    bank = MemoryBank(MemoryConfig(capacity=2, top_k=4, read_kernel="triton", eviction="usage"), 16, 16, 2, 3, 1)
    assert bank.read_kernel == "triton" and not bank._work.dense
    bank.add(torch.randn(1, 16, 2, 3), torch.randn(1, 16, 2, 3))
    bank.read(torch.randn(1, 16, 2, 3))
    print("ok")
    """
)


@pytest.mark.slow
def test_split_memory_read_tails_and_no_dense_buffer_in_the_triton_interpreter() -> None:
    """Tiny shapes in Triton's interpreter (a subprocess: the interpreter is chosen when
    the kernels are defined). Slow: minutes on two shared cores, so CI skips it; run it
    with ``-m slow`` after touching the kernels (it passed when they were written)."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run([sys.executable, "-c", _INTERPRETED], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]


def test_a_failed_warm_up_is_a_clear_error_when_triton_is_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    from eamstcn.runtime import readout_triton

    def broken(self, device) -> None:  # noqa: ANN001
        raise RuntimeError("PassManager::run failed\nmore")

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(readout_triton.FusedTopkRead, "warm_up", broken)
    with pytest.raises(ValueError, match="failed its warm-up read .PassManager::run failed.$"):
        MemoryBank(MemoryConfig(capacity=2, top_k=4, read_kernel="triton"), 16, 16, 2, 3, 1)
    monkeypatch.setattr(readout_triton, "triton_problem", lambda: "needs Triton >= 3.3 (tl.topk), found 3.2.0")
    with pytest.raises(ValueError, match="Triton >= 3.3"):
        MemoryBank(MemoryConfig(capacity=2, top_k=4, read_kernel="triton"), 16, 16, 2, 3, 1)


def test_torch_read_buffers_refuse_a_fused_only_allocation() -> None:
    from eamstcn.runtime.readout import ReadoutBuffers, topk_weights

    buffers = ReadoutBuffers.allocate(4096, 100, 20, key_dim=16, value_dim=32, dense=False)
    assert buffers.affinity.numel() == 0 and buffers.shape == (100, 4096, 20)
    assert buffers.nbytes < 100 * 4096  # not the 1.6 MB of the dense affinity
    with pytest.raises(ValueError, match="fused read"):
        topk_weights(torch.randn(16, 4096), torch.ones(4096), torch.ones(4096, dtype=torch.bool), torch.randn(16, 100), buffers)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bank_fused_read_warms_up_splits_and_holds_no_dense_buffer() -> None:
    bank = MemoryBank(MemoryConfig(capacity=64, read_kernel="auto"), 64, 512, 30, 54, 1, device="cuda", dtype=torch.float16)
    assert bank.read_kernel == "triton", bank.read_kernel_note
    assert not bank._work.dense  # noqa: SLF001
    splits, _ = bank._fused.splits(30 * 54, 64 * 30 * 54)  # noqa: SLF001
    assert splits > 1

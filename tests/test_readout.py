from __future__ import annotations

import math

import pytest
import torch

from eamstcn.ops import softmax_readout
from eamstcn.runtime.readout import ReadoutBuffers, topk_readout
from tests.helpers.readout_reference import dense_readout, position_weight


def _read(keys, values, query, valid, top_k, **kwargs):
    """(readout, position weight (N,)) through the top-k path."""
    readout, weights, indices = topk_readout(keys, values, query, valid, top_k, **kwargs)
    return readout, position_weight(weights, indices, keys.shape[1])


def _random_memory(num_memory: int, num_queries: int, seed: int, key_dim: int = 8, objects: int = 2, value_dim: int = 5):
    generator = torch.Generator().manual_seed(seed)
    opts = {"generator": generator, "dtype": torch.float64}
    keys = torch.randn(key_dim, num_memory, **opts)
    values = torch.randn(objects, num_memory, value_dim, **opts)  # position-major
    query = torch.randn(key_dim, num_queries, **opts)
    valid = torch.rand(num_memory, generator=generator) > 0.3
    valid[0] = True
    return keys, values, query, valid


@pytest.mark.parametrize("num_memory", [1, 7, 60, 250])
@pytest.mark.parametrize("num_queries", [1, 13, 64])
@pytest.mark.parametrize("top_k", [1, 3, 20, 300])
def test_topk_matches_dense_reference(num_memory: int, num_queries: int, top_k: int) -> None:
    keys, values, query, valid = _random_memory(num_memory, num_queries, seed=num_memory * 1000 + num_queries + top_k)
    readout, weight = _read(keys, values, query, valid, top_k)
    expected_readout, expected_weight = dense_readout(keys, values, query, valid, top_k)
    assert readout.shape == (2, 5, num_queries) and weight.shape == (num_memory,)
    # Scores and weights are float32 (the reference is float64 throughout).
    torch.testing.assert_close(readout, expected_readout, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(weight, expected_weight.float(), atol=1e-5, rtol=1e-5)


def test_top_k_over_everything_is_the_training_softmax() -> None:
    keys, values, query, _ = _random_memory(40, 9, seed=3)
    valid = torch.ones(40, dtype=torch.bool)
    readout, _ = _read(keys, values, query, valid, top_k=40)
    expected = softmax_readout(keys[None], values.transpose(1, 2), query[None])
    torch.testing.assert_close(readout, expected, atol=1e-5, rtol=1e-5)


def test_preallocated_buffers_and_output_are_used_and_reusable() -> None:
    keys, values, query, valid = _random_memory(30, 6, seed=4)
    buffers = ReadoutBuffers.allocate(30, 6, 4, key_dim=8, value_dim=5, dtype=torch.float64)
    out = torch.empty(2, 5, 6, dtype=torch.float64)
    sq_norm = keys.pow(2).sum(dim=0)
    for _ in range(2):
        readout, weights, indices = topk_readout(keys, values, query, valid, 4, key_sq_norm=sq_norm, buffers=buffers, out=out)
        assert readout.data_ptr() == out.data_ptr()
        assert weights.data_ptr() == buffers.weights.data_ptr() and indices.data_ptr() == buffers.indices.data_ptr()
        torch.testing.assert_close(readout, dense_readout(keys, values, query, valid, 4)[0], atol=1e-5, rtol=1e-5)


def test_buffers_of_another_shape_are_refused() -> None:
    keys, values, query, valid = _random_memory(30, 6, seed=5)
    with pytest.raises(ValueError, match="buffers are for"):
        topk_readout(keys, values, query, valid, 4, buffers=ReadoutBuffers.allocate(30, 7, 4, key_dim=8, value_dim=5, dtype=torch.float64))


def test_masked_positions_never_contribute_even_when_they_would_win() -> None:
    keys, values, query, _ = _random_memory(20, 5, seed=6)
    valid = torch.ones(20, dtype=torch.bool)
    valid[[2, 7, 11]] = False
    keys[:, [2, 7, 11]] = query[:, [0, 1, 2]] * 1.01  # near-perfect matches: they would win top-k
    values[:, [2, 7, 11]] = 1e6
    readout, weight = _read(keys, values, query, valid, top_k=4)
    assert torch.all(weight[~valid] == 0)
    kept = valid.nonzero().squeeze(1)
    expected, _ = dense_readout(keys[:, kept], values[:, kept], query, torch.ones(len(kept), dtype=torch.bool), 4)
    torch.testing.assert_close(readout, expected, atol=1e-5, rtol=1e-5)


def test_k_larger_than_valid_count_gives_invalid_positions_zero_weight() -> None:
    keys, values, query, _ = _random_memory(10, 4, seed=7)
    valid = torch.zeros(10, dtype=torch.bool)
    valid[[1, 4]] = True
    readout, weight = _read(keys, values, query, valid, top_k=8)
    assert torch.all(weight[~valid] == 0)
    torch.testing.assert_close(weight.sum(), torch.tensor(4.0))
    assert torch.isfinite(readout).all()


def test_nothing_valid_reads_zeros_not_nan() -> None:
    keys, values, query, _ = _random_memory(10, 4, seed=8)
    readout, weight = _read(keys, values, query, torch.zeros(10, dtype=torch.bool), top_k=3)
    assert torch.all(readout == 0) and torch.all(weight == 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_weights_sum_to_one_per_query(dtype: torch.dtype) -> None:
    keys, _, query, valid = (t.to(dtype) if t.is_floating_point() else t for t in _random_memory(50, 11, seed=9))
    ones = torch.ones(1, 50, 1, dtype=dtype)  # readout of all-one values = sum of the weights
    readout, weight = _read(keys, ones, query, valid, top_k=20)
    tolerance = 1e-3 if dtype == torch.float16 else 1e-6
    torch.testing.assert_close(readout.float(), torch.ones(1, 1, 11), atol=tolerance, rtol=0)
    torch.testing.assert_close(weight.float().sum(), torch.tensor(11.0), atol=11 * tolerance, rtol=0)


def test_fp16_large_keys_stay_finite() -> None:
    """Key norms near 100: affinities reach thousands, where exp() overflows without the max shift."""
    generator = torch.Generator().manual_seed(10)
    key_dim, num_memory, num_queries = 64, 300, 40
    keys = torch.randn(key_dim, num_memory, generator=generator)
    keys = 100.0 * keys / keys.norm(dim=0, keepdim=True)
    query = keys[:, torch.randint(0, num_memory, (num_queries,), generator=generator)]
    query = query + 0.5 * torch.randn(key_dim, num_queries, generator=generator)
    values = torch.randn(3, num_memory, 16, generator=generator)
    valid = torch.ones(num_memory, dtype=torch.bool)
    valid[::7] = False

    scores = dense_readout(keys.double(), values.double(), query.double(), valid, 20)  # sanity of the setup
    assert torch.isfinite(scores[0]).all()
    largest = ((2 * keys.t() @ query - keys.pow(2).sum(0)[:, None]) / math.sqrt(key_dim)).max()
    assert largest > 11.1  # exp(11.1) > 65504: an unshifted fp16 exp would overflow

    readout, weight = _read(keys.half(), values.half(), query.half(), valid, 20)
    assert torch.isfinite(readout).all() and torch.isfinite(weight).all()
    torch.testing.assert_close(weight.float().sum(), torch.tensor(float(num_queries)), atol=0.05, rtol=0)
    assert torch.all(weight[~valid] == 0)
    # Each query sits next to one key: the readout is close to that key's value.
    torch.testing.assert_close(readout.float(), scores[0].float(), atol=0.05, rtol=0.01)


@pytest.mark.parametrize(("num_memory", "divides"), [(1000, None), (6480, 405), (810, 405)])
def test_two_stage_topk_is_exact(num_memory: int, divides: int | None) -> None:
    """Top-k through the k best chunk maxima gives the plain top-k's values."""
    keys, values, query, valid = _random_memory(num_memory, 37, seed=num_memory, key_dim=16)
    valid[: num_memory // 3] = False  # whole chunks invalid, as empty memory slots are
    buffers = ReadoutBuffers.allocate(num_memory, 37, 20, key_dim=16, value_dim=5, dtype=torch.float64, chunk_divides=divides)
    assert buffers.chunk > 1
    readout, weights, indices = topk_readout(keys, values, query, valid, 20, buffers=buffers)
    expected, expected_weight = dense_readout(keys, values, query, valid, 20)
    torch.testing.assert_close(readout, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(position_weight(weights, indices, num_memory), expected_weight.float(), atol=1e-5, rtol=1e-5)
    assert torch.all(weights[:, :-1] >= weights[:, 1:])  # sorted, largest first

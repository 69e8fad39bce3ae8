"""Padding, normalisation and soft aggregation."""

from __future__ import annotations

import pytest
import torch

from eamstcn.ops import affinity, pad_amounts, pad_to_multiple, padded_size, soft_aggregate, softmax_readout, topk_softmax_readout, unpad


@pytest.mark.parametrize("size", [(480, 854), (37, 51), (64, 64), (1, 17), (33, 100)])
def test_pad_unpad_round_trip(size: tuple[int, int]) -> None:
    x = torch.randn(2, 3, *size)
    padded, pads = pad_to_multiple(x)
    assert padded.shape[-2] % 16 == 0 and padded.shape[-1] % 16 == 0
    assert padded.shape[-2:] == padded_size(*size)
    assert torch.equal(unpad(padded, pads), x)


def test_pad_split_evenly() -> None:
    assert pad_amounts(480, 854) == (5, 5, 0, 0)
    assert pad_amounts(37, 51) == (6, 7, 5, 6)


def test_soft_aggregate_sums_to_one_and_argmax() -> None:
    torch.manual_seed(0)
    probs = torch.rand(3, 1, 8, 8)
    logits, aggregated = soft_aggregate(probs)
    assert aggregated.shape == (4, 1, 8, 8) and logits.shape == (4, 1, 8, 8)
    torch.testing.assert_close(aggregated.sum(0), torch.ones(1, 8, 8))
    # A pixel where object 2 is certain and the others are not -> label 2.
    probs = torch.full((3, 1, 1, 1), 0.01)
    probs[1] = 0.99
    assert soft_aggregate(probs)[1].argmax(0).item() == 2
    # Nothing is likely -> background.
    assert soft_aggregate(torch.full((3, 1, 1, 1), 0.01))[1].argmax(0).item() == 0


def test_soft_aggregate_extremes_are_finite() -> None:
    probs = torch.tensor([0.0, 1.0]).view(2, 1, 1, 1)
    logits, aggregated = soft_aggregate(probs)
    assert torch.isfinite(logits).all() and torch.isfinite(aggregated).all()


def test_affinity_is_negative_squared_distance_up_to_query_constant() -> None:
    torch.manual_seed(0)
    memory, query = torch.randn(1, 8, 5), torch.randn(1, 8, 4)
    distance = ((memory.unsqueeze(3) - query.unsqueeze(2)) ** 2).sum(1)  # (1, 5, 4)
    expected = (-distance + query.pow(2).sum(1, keepdim=True)) / 8**0.5
    torch.testing.assert_close(affinity(memory, query), expected)


def test_softmax_readout_weights_sum_to_one() -> None:
    torch.manual_seed(0)
    keys, query = torch.randn(1, 8, 6), torch.randn(1, 8, 3)
    ones = torch.ones(2, 1, 6)  # a value of one everywhere reads back as one
    torch.testing.assert_close(softmax_readout(keys, ones, query), torch.ones(2, 1, 3))


def test_topk_softmax_readout_keeps_the_k_best_positions_per_query() -> None:
    torch.manual_seed(0)
    keys, values, query = torch.randn(1, 8, 30, dtype=torch.float64), torch.randn(3, 5, 30), torch.randn(1, 8, 7, dtype=torch.float64)
    scores = affinity(keys, query)[0]  # (N, M) in float64, by another route than the read's
    kept = scores >= scores.topk(4, dim=0).values[-1:]
    weights = torch.softmax(scores.masked_fill(~kept, float("-inf")), dim=0).float()
    torch.testing.assert_close(topk_softmax_readout(keys, values, query, 4), values @ weights)
    # Keeping every position is the dense read.
    torch.testing.assert_close(topk_softmax_readout(keys, values, query, 99), softmax_readout(keys.float(), values, query.float()))

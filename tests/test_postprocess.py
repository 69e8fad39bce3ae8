"""Label maps from probabilities: the running-maximum pass equals argmax, ties included."""

from __future__ import annotations

import pytest
import torch

from eamstcn.runtime.postprocess import OutputMaker


class _Geometry:
    size = (24, 40)

    def interior(self) -> tuple[slice, slice]:
        return slice(0, 24), slice(0, 40)


@pytest.mark.parametrize("objects", [1, 2, 4])
def test_labels_equal_argmax_with_ties(objects: int) -> None:
    torch.manual_seed(objects)
    probs = torch.rand(objects + 1, 1, 24, 40).round(decimals=1)  # coarse values: many ties
    maker = OutputMaker(probs, _Geometry(), (24, 40))
    ids = torch.tensor([0, 3, 9, 4, 200][: objects + 1], dtype=torch.uint8)
    output = maker.run()
    labels = maker.labels(output, ids)
    assert torch.equal(labels, ids[output.argmax(dim=0)])  # argmax keeps the first of equal rows
    assert labels.data_ptr() == maker.labels(output, ids).data_ptr()  # a fixed buffer


def test_labels_read_nothing_back_to_the_host() -> None:
    """masked_fill_ with a 0-d tensor value calls .item() inside its kernel (a CUDA sync
    per object per frame): invisible to a dispatch mode, seen by the profiler."""
    from tests.sync_guard import NestedHostReads

    probs = torch.rand(4, 1, 24, 40)
    maker = OutputMaker(probs, _Geometry(), (24, 40))
    ids = torch.tensor([0, 3, 9, 4], dtype=torch.uint8)
    output = maker.run()
    with NestedHostReads() as reads:
        maker.labels(output, ids)
    assert reads.names == []


def test_the_nested_host_read_guard_sees_masked_fill_with_a_tensor_value() -> None:
    from tests.sync_guard import NestedHostReads

    labels, wins = torch.zeros(4, 4, dtype=torch.uint8), torch.ones(4, 4, dtype=torch.bool)
    with NestedHostReads() as reads:
        labels.masked_fill_(wins, torch.tensor(3, dtype=torch.uint8))
    assert reads.names


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_labels_do_not_sync() -> None:
    probs = torch.rand(4, 1, 24, 40, device="cuda")
    maker = OutputMaker(probs, _Geometry(), (24, 40))
    ids = torch.tensor([0, 3, 9, 4], dtype=torch.uint8, device="cuda")
    output = maker.run()
    maker.labels(output, ids)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        labels = maker.labels(output, ids)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.equal(labels.cpu(), ids.cpu()[output.cpu().argmax(dim=0)])

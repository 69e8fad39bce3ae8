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

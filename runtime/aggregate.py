"""Sigmoid + soft aggregation of the decoder's logits into fixed buffers.

The arithmetic of :func:`eamstcn.ops.soft_aggregate` op for op (so results are the same
bits), each op writing into a buffer allocated once per object count K.
"""

from __future__ import annotations

import torch


class Aggregator:
    """``probs`` (K+1, 1, Hp, Wp) float32: row 0 the background, rows 1..K the objects.

    ``object_probs`` is the (K, Hp, Wp) view of rows 1..K (what the save rule and the
    value encoder take).
    """

    def __init__(self, num_objects: int, padded: tuple[int, int], device: torch.device, eps: float = 1e-7) -> None:
        shape = (num_objects + 1, 1, *padded)
        self.probs = torch.zeros(shape, device=device)
        self.object_probs = self.probs[1:, 0]
        self._stacked = torch.empty(shape, device=device)
        self._work = torch.empty(shape, device=device)
        self._eps = eps

    def run(self, logits: torch.Tensor) -> torch.Tensor:
        """logits (K, 1, Hp, Wp), any float dtype -> ``probs``; returns ``probs``."""
        stacked, work = self._stacked, self._work
        objects = stacked[1:]
        if logits.dtype == torch.float32:
            torch.sigmoid(logits, out=objects)
        else:
            objects.copy_(logits).sigmoid_()  # in float32, as ops.soft_aggregate's caller does
        torch.neg(objects, out=work[1:]).add_(1.0)  # 1 - p
        torch.prod(work[1:], dim=0, keepdim=True, out=stacked[:1])  # p_0 = prod(1 - p_k)
        stacked.clamp_(self._eps, 1 - self._eps)
        torch.neg(stacked, out=work).add_(1.0)
        torch.div(stacked, work, out=work).log_()  # logit = log(p / (1 - p))
        torch.ops.aten._softmax.out(work, 0, False, out=self.probs)
        return self.probs

    def one_hot(self, dense: torch.Tensor) -> torch.Tensor:
        """Dense indices (Hp, Wp) (0 = background) -> ``probs`` one-hot; returns ``probs``."""
        classes = torch.arange(self.probs.shape[0], device=dense.device).view(-1, 1, 1)
        self.probs[:, 0].copy_(dense.unsqueeze(0) == classes)
        return self.probs

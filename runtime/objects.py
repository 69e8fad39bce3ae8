"""The user's object ids <-> dense indices 1..K, and what annotated frames need.

Object ids are whatever the user's masks hold (1..255, sparse); the engines and the
memory see dense indices 1..K in order of first appearance (increasing id within a
frame). Annotated frames are rare and not part of the steady step: registering their ids
reads the mask's distinct values back to the host (one small sync) and may allocate.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from eamstcn.ops import pad_to_multiple


class ObjectError(ValueError):
    """A mask the registry cannot use; one line meant for the user."""


class ObjectRegistry:
    """Dense index k-1 -> the user's id (``ids``), tables for both directions on the device."""

    def __init__(self, device: torch.device, max_objects: int) -> None:
        self.device = device
        self.max_objects = max_objects
        self.ids: list[int] = []
        self._dense_of_id = torch.zeros(256, dtype=torch.long, device=device)
        self.id_of_dense = torch.zeros(1, dtype=torch.uint8, device=device)  # (K+1,): 0 -> 0

    def __len__(self) -> int:
        return len(self.ids)

    def reset(self) -> None:
        self.ids = []
        self._dense_of_id.zero_()
        self.id_of_dense = torch.zeros(1, dtype=torch.uint8, device=self.device)

    def register(self, mask: torch.Tensor, first: bool) -> tuple[torch.Tensor, int]:
        """User ids (H, W) uint8 on the device -> dense indices (H, W) long (0 = none drawn),
        and how many objects are new. New ids get the next dense indices, in increasing id
        order. Raises :class:`ObjectError` for an empty first mask or too many objects."""
        present = [int(v) for v in torch.unique(mask).tolist() if v != 0]  # the one sync of an annotated frame
        if not present and first:
            raise ObjectError("the first mask has no object (every pixel is background)")
        new = [v for v in present if v not in self.ids]
        total = len(self.ids) + len(new)
        if total > self.max_objects:
            raise ObjectError(f"{total} objects requested; these engines/bank take at most {self.max_objects}")
        if new:
            self.ids.extend(new)
            table = torch.zeros(256, dtype=torch.long)
            table[torch.tensor(self.ids)] = torch.arange(1, total + 1)
            self._dense_of_id = table.to(self.device)
            self.id_of_dense = torch.tensor([0, *self.ids], dtype=torch.uint8, device=self.device)
        return self._dense_of_id[mask.long()], len(new)


def to_graph_size(dense: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Dense indices (H, W) -> (Hp, Wp): nearest resize to the graphs' frame size, zero pad."""
    x = dense[None, None].float()
    if tuple(x.shape[-2:]) != size:
        x = F.interpolate(x, size=size, mode="nearest")
    x, _ = pad_to_multiple(x)
    return x[0, 0].long()


def one_hot(dense: torch.Tensor, num_objects: int) -> torch.Tensor:
    """Dense indices (H, W) -> (K+1, 1, H, W) float32 one-hot (0 is background)."""
    classes = torch.arange(num_objects + 1, device=dense.device).view(-1, 1, 1)
    return (dense.unsqueeze(0) == classes).float().unsqueeze(1)


def overwrite(probs: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    """Where ``dense`` (H, W) names an object, make ``probs`` (K+1, 1, H, W) one-hot on it;
    elsewhere keep the prediction (rows of objects added this frame are 0 there)."""
    classes = torch.arange(probs.shape[0], device=probs.device).view(-1, 1, 1, 1)
    annotated = (dense > 0).view(1, 1, *dense.shape)
    hot = (dense.view(1, 1, *dense.shape) == classes).to(probs.dtype)
    return torch.where(annotated, hot, probs)

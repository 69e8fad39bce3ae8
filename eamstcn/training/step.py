"""The 3-frame training step, in a wrapper around the stateless :class:`EamStcn`.

Frame 0's true mask is encoded as a value; frame 1 is predicted from it and its *soft*
aggregated mask is encoded as a second value (gradients flow through it); frame 2 is
predicted from both. Training reads memory with the dense softmax
(:func:`eamstcn.ops.softmax_readout`), never top-k.
"""

from __future__ import annotations

import torch
from torch import nn

from eamstcn.network import EamStcn
from eamstcn.ops import soft_aggregate, softmax_readout


class TrainWrapper(nn.Module):
    """``forward(frames, first_masks, selector)`` -> aggregated logits of frames 1 and 2.

    ``freeze_bn`` keeps every batch-norm layer in eval mode even while training (STCN with
    pretrained trunks); from scratch the statistics must be learnt, so it is off there.
    """

    def __init__(self, network: EamStcn, freeze_bn: bool = False) -> None:
        super().__init__()
        self.network = network
        self.freeze_bn = freeze_bn

    def train(self, mode: bool = True) -> TrainWrapper:
        super().train(mode)
        if mode and self.freeze_bn:
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def forward(self, frames: torch.Tensor, first_masks: torch.Tensor, selector: torch.Tensor) -> torch.Tensor:
        """Run the 3-frame step.

        Args:
            frames: (B, 3, 3, H, W) normalised images, H and W multiples of 16.
            first_masks: (B, K, H, W) float 0/1 true masks of frame 0 (K = 1 or 2;
                an absent second object is all zeros).
            selector: (B, K) 1 for real objects, 0 for padding objects.
        Returns:
            (B, 2, K+1, H, W) aggregated logits of frames 1 and 2 (index 0 background).
        """
        net = self.network
        batch, num_frames, _, height, width = frames.shape
        if num_frames != 3:
            raise ValueError(f"the training step takes 3 frames, got {num_frames}")
        num_objects = first_masks.shape[1]
        keys, f16x, f8, f4 = (x.unflatten(0, (batch, num_frames)) for x in net.encode_key(frames.flatten(0, 1)))

        def per_object(x: torch.Tensor) -> torch.Tensor:
            # (B, ...) -> (B*K, ...): the network's object axis carries batch x objects.
            return x.repeat_interleave(num_objects, dim=0)

        def encode(t: int, masks: torch.Tensor) -> torch.Tensor:
            """masks (B, K, H, W) -> values (B, K, Cv, h*w)."""
            others = masks.sum(dim=1, keepdim=True) - masks
            values = net.encode_value(
                per_object(frames[:, t]),
                masks.reshape(-1, 1, height, width),
                others.reshape(-1, 1, height, width),
                per_object(f16x[:, t]),
            )  # (B*K, Cv, h, w)
            return values.unflatten(0, (batch, num_objects)).flatten(3)

        def segment(t: int, memory_keys: torch.Tensor, memory_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            """memory_keys (B, Ck, N), memory_values (B, K, Cv, N) -> aggregated
            logits and probabilities, each (B, K+1, H, W)."""
            value_dim = memory_values.shape[2]
            query = keys[:, t].flatten(2)  # (B, Ck, h*w)
            # Folding K into the channel axis lets one batched matmul read all objects.
            readout = softmax_readout(memory_keys, memory_values.flatten(1, 2), query)  # (B, K*Cv, h*w)
            readout = readout.reshape(batch * num_objects, value_dim, *keys.shape[-2:])
            logits = net.decode(readout, per_object(f16x[:, t]), per_object(f8[:, t]), per_object(f4[:, t]))
            probs = torch.sigmoid(logits.float()).reshape(batch, num_objects, height, width)
            probs = probs * selector[:, :, None, None]  # padding objects never win a pixel
            # soft_aggregate works along dim 0; objects go there, the batch rides along.
            agg_logits, agg_probs = soft_aggregate(probs.transpose(0, 1))
            return agg_logits.transpose(0, 1), agg_probs.transpose(0, 1)

        value0 = encode(0, first_masks)
        logits1, probs1 = segment(1, keys[:, 0].flatten(2), value0)
        value1 = encode(1, probs1[:, 1:].to(value0.dtype))
        memory_keys = torch.cat([keys[:, 0].flatten(2), keys[:, 1].flatten(2)], dim=2)
        logits2, _ = segment(2, memory_keys, torch.cat([value0, value1], dim=3))
        return torch.stack([logits1, logits2], dim=1)

"""The per-frame loop, written to be read: what the runtime's fast step computes.

Read this first. The runtime (``eamstcn.runtime``) does the same work with fixed
buffers, engines bound once, a bounded memory bank, a top-k read and a save rule decided
on the device (docs/ARCHITECTURE.md); ``tests/test_reference_oracle.py`` checks that it
gives these probabilities when its top-k keeps every position, its memory never fills
and it saves every N frames.

Here, per frame t:

1. normalise and pad the frame, run the key encoder;
2. t = 0: the given mask is the answer (one-hot probabilities);
   t >= 1: read the memory (softmax of the affinity over *every* stored position), run
   the decoder, sigmoid, soft aggregation;
3. store frame 0 and every ``save_every``-th frame except the last: run the value
   encoder on the frame's probabilities and keep its key and value. Memory only grows.

The three graphs are called through their exported names (``eamstcn.graph_spec``), so
any engine set (``eamstcn.runtime.engines.open_engines``) or :class:`NetworkGraphs` runs
it. Torch only, like :mod:`eamstcn.ops`.
"""

from __future__ import annotations

from typing import Protocol

import torch

from eamstcn.ops import normalize_image, pad_to_multiple, soft_aggregate, softmax_readout, unpad

Outputs = dict[str, torch.Tensor]


class Graph(Protocol):
    def __call__(self, **inputs: torch.Tensor) -> Outputs: ...


class Graphs(Protocol):
    """The three graphs, named inputs in, named outputs out (shapes: docs/ARCHITECTURE.md)."""

    key_encoder: Graph
    value_encoder: Graph
    decoder: Graph


class NetworkGraphs:
    """An :class:`eamstcn.network.EamStcn` seen as the three graphs (no export needed)."""

    def __init__(self, network: torch.nn.Module) -> None:
        self.network = network.eval()

    def key_encoder(self, image: torch.Tensor) -> Outputs:
        key, f16x, f8, f4 = self.network.encode_key(image)
        return {"key": key, "f16x": f16x, "f8": f8, "f4": f4}

    def value_encoder(self, image: torch.Tensor, masks: torch.Tensor, others: torch.Tensor, f16x: torch.Tensor) -> Outputs:
        return {"value": self.network.encode_value(image, masks, others, f16x)}

    def decoder(self, readout: torch.Tensor, f16x: torch.Tensor, f8: torch.Tensor, f4: torch.Tensor) -> Outputs:
        return {"logits": self.network.decode(readout, f16x, f8, f4)}


def prepare_image(frame: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """(H, W, 3) uint8 RGB -> ((1, 3, Hp, Wp) float32 normalised and zero-padded, pads)."""
    rgb = frame.permute(2, 0, 1).float().div(255.0)
    return pad_to_multiple(normalize_image(rgb).unsqueeze(0))


@torch.no_grad()
def segment(graphs: Graphs, frames: torch.Tensor, first_mask: torch.Tensor, save_every: int = 5) -> torch.Tensor:
    """Segment a clip from its first frame's mask.

    Args:
        graphs: the key encoder, value encoder and decoder (float32 in and out).
        frames: (T, H, W, 3) uint8 RGB at the graphs' frame size (no resize here).
        first_mask: (H, W) integer object indices 0..K (0 = background; all K present).
        save_every: store frames 0, save_every, 2*save_every, ... (never the last one).
    Returns:
        (T, K+1, H, W) float32 probabilities; row 0 is the background. Frame 0's is the
        one-hot mask.
    """
    num_frames = frames.shape[0]
    num_objects = int(first_mask.max())
    device = frames.device
    memory_keys: list[torch.Tensor] = []  # each (1, Ck, h*w)
    memory_values: list[torch.Tensor] = []  # each (K, Cv, h*w)
    outputs = []
    for t in range(num_frames):
        image, pads = prepare_image(frames[t])  # (1, 3, Hp, Wp)
        encoded = graphs.key_encoder(image=image)
        key, f16x, f8, f4 = encoded["key"], encoded["f16x"], encoded["f8"], encoded["f4"]
        latent = key.shape[-2:]  # (h, w) = (Hp/16, Wp/16)
        if t == 0:
            indices = torch.arange(num_objects + 1, device=device).view(-1, 1, 1)
            one_hot = (first_mask.to(device) == indices).float().unsqueeze(1)  # (K+1, 1, H, W)
            probs, _ = pad_to_multiple(one_hot)  # (K+1, 1, Hp, Wp)
        else:
            readout = softmax_readout(
                torch.cat(memory_keys, dim=2).float(),  # (1, Ck, N), N = stored frames * h*w
                torch.cat(memory_values, dim=2).float(),  # (K, Cv, N)
                key.flatten(2).float(),  # (1, Ck, h*w)
            )  # (K, Cv, h*w)
            logits = graphs.decoder(readout=readout.view(num_objects, -1, *latent), f16x=f16x, f8=f8, f4=f4)["logits"]
            _, probs = soft_aggregate(torch.sigmoid(logits.float()))  # (K+1, 1, Hp, Wp)
        outputs.append(unpad(probs, pads)[:, 0])
        if t == 0 or (t % save_every == 0 and t < num_frames - 1):
            masks = probs[1:]  # (K, 1, Hp, Wp): each object's probability
            others = masks.sum(dim=0, keepdim=True) - masks  # the other objects' sum
            value = graphs.value_encoder(image=image, masks=masks, others=others, f16x=f16x)["value"]
            memory_keys.append(key.flatten(2))
            memory_values.append(value.flatten(2))
    return torch.stack(outputs)


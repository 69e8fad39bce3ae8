"""A cheap torch "engine set" whose decoder returns the ground truth as +-100 logits.

For tests of the schedule and the save rule on real video without a network: the key
encoder counts frames and writes the frame index into ``f16x`` (so the value encoder can
tell which frame it is asked to encode, whenever the session calls it); the decoder
returns +100 inside the ground-truth mask of the current frame and -100 elsewhere
(padding included), so that sigmoid + soft aggregation give exactly the one-hot truth
clamped to [1e-7, 1 - 1e-7]. Latent sizes are the real ones (H/16, W/16); the channel
counts are tiny so that memory reads cost little.
"""

from __future__ import annotations

import torch

from eamstcn.config import ModelConfig
from eamstcn.ops import pad_amounts
from eamstcn.runtime.engines.base import EngineSet, GraphEngine, TensorSpec
from eamstcn.runtime.manifest import checkpoint_manifest

#: Channels of keys and values in the fake graphs (ModelConfig needs value_dim even).
KEY_DIM = 8
VALUE_DIM = 8
LOGIT = 100.0


class _Engine(GraphEngine):
    def __init__(self, graph: str, specs, run) -> None:  # noqa: ANN001
        super().__init__(graph, *specs)
        self._run = run

    def __call__(self, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        self._begin_call(inputs)
        return self._run(**inputs)


class GroundTruthEngines:
    """Builds an :class:`EngineSet` over ``masks`` (T, H, W) bool ground truth, one object.

    ``encoded`` lists, per value-encoder call, a 0-d tensor holding the index of the frame
    whose ``f16x`` was passed (resolve with ``encoded_frames()`` after the run).
    """

    def __init__(self, masks: torch.Tensor, frame_size: tuple[int, int], max_objects: int = 1) -> None:
        height, width = frame_size
        left, right, top, bottom = pad_amounts(height, width)
        self.padded = (height + top + bottom, width + left + right)
        self._pads = (left, right, top, bottom)
        self.masks = masks
        self.index = -1
        self.encoded: list[torch.Tensor] = []
        hp, wp = self.padded
        self._key = torch.zeros(1, KEY_DIM, hp // 16, wp // 16)
        self._f16x = torch.zeros(1, VALUE_DIM, hp // 16, wp // 16)
        self._f8 = torch.zeros(1, 1, hp // 8, wp // 8)
        self._f4 = torch.zeros(1, 1, hp // 4, wp // 4)
        self._logits = torch.empty(1, 1, hp, wp)
        config = ModelConfig(key_dim=KEY_DIM, value_dim=VALUE_DIM)
        self.manifest = checkpoint_manifest(config, frame_size, max_objects)

    def reset(self) -> None:
        self.index = -1
        self.encoded.clear()

    def encoded_frames(self) -> list[int]:
        return [int(tag) for tag in self.encoded]

    def _encode_key_shapes(self) -> dict[str, torch.Tensor]:
        return {"key": self._key, "f16x": self._f16x, "f8": self._f8, "f4": self._f4}

    def _encode_key(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        self.index += 1
        self._f16x.fill_(float(self.index))  # a tag the value encoder reads back
        return {"key": self._key, "f16x": self._f16x, "f8": self._f8, "f4": self._f4}

    def _encode_value(self, image: torch.Tensor, masks: torch.Tensor, others: torch.Tensor, f16x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.encoded.append(f16x[0, 0, 0, 0].clone())
        return {"value": torch.zeros(masks.shape[0], VALUE_DIM, *f16x.shape[-2:])}

    def _decode(self, readout: torch.Tensor, f16x: torch.Tensor, f8: torch.Tensor, f4: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self._logits.fill_(-LOGIT)
        left, right, top, bottom = self._pads
        hp, wp = self.padded
        inner = logits[0, 0, top : hp - bottom, left : wp - right]
        inner.masked_fill_(self.masks[self.index], LOGIT)
        return {"logits": logits.expand(readout.shape[0], -1, -1, -1)}

    def engine_set(self) -> EngineSet:
        graphs = self.manifest.graphs
        specs = {name: entry.with_dtype(torch.float32) for name, entry in graphs.items()}
        # Concrete key-encoder outputs (the checkpoint manifest leaves f8/f4 channels
        # symbolic), so binding never has to call the engine to learn them.
        produced = self._encode_key_shapes()
        specs["key_encoder"] = (specs["key_encoder"][0], tuple(TensorSpec(n, tuple(t.shape)) for n, t in produced.items()))
        return EngineSet(
            key_encoder=_Engine("key_encoder", specs["key_encoder"], self._encode_key),
            value_encoder=_Engine("value_encoder", specs["value_encoder"], self._encode_value),
            decoder=_Engine("decoder", specs["decoder"], self._decode),
            manifest=self.manifest,
            device=torch.device("cpu"),
            dtype=torch.float32,
            backend="ground-truth",
        )

"""The per-frame work of one stream, on buffers allocated once, with engines bound once.

A :class:`StepCore` is built for one frame geometry. It owns the normalised image, the
key encoder's outputs (key, f16x, f8, f4), the memory bank and the save rule; per
object count K it makes, on first use, :class:`ObjectParts`: the readout, the decoder's
logits, the probabilities, the value encoder's inputs and output, and the engines bound
to them. Nothing in a steady phase allocates, and nothing reads the device.

Steady frames run two phases, each a list of named pieces of device work (the names are
the timer's stages):

- ``store`` (frame t-1, run at the start of frame t, before its read): the value
  encoder on frame t-1's image, f16x and probabilities, still in their buffers, then
  ``MemoryBank.commit`` with the device flag ``pending`` (frame t-1's save decision);
- ``frame``: normalise, key encoder, memory read, decoder, aggregation, the save rule's
  decision, copied into ``pending``, output at the frame's size.

``pending`` is a 0-d bool device tensor, so the whole steady step can be one CUDA
graph with the store inside a conditional node (:meth:`StepCore.graphed_step`); else the
phases run eagerly (:meth:`StepCore.run_store`, :meth:`StepCore.run_frame`) and the host
decides whether to run the store (:mod:`eamstcn.runtime.session`).

First and annotated frames (rare, may sync and allocate) have their own methods.
Which user ids the objects have, input checks and the schedule live in the session.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from eamstcn.runtime.aggregate import Aggregator
from eamstcn.runtime.config import MemoryConfig, SaveConfig
from eamstcn.runtime.cuda_graphs import GraphedStep
from eamstcn.runtime.decision import DecisionMirror
from eamstcn.runtime.engines.base import EngineSet
from eamstcn.runtime.engines.binding import BoundEngine, bind
from eamstcn.runtime.geometry import Geometry
from eamstcn.runtime.memory import MemoryBank
from eamstcn.runtime.objects import overwrite
from eamstcn.runtime.postprocess import OutputMaker
from eamstcn.runtime.preprocess import Preprocessor
from eamstcn.runtime.save_policy import SavePolicy
from eamstcn.runtime.timing import StageTimer


@dataclass(frozen=True)
class Phase:
    """A steady phase: ``(stage name, work)`` pieces that enqueue device work into fixed
    buffers, with no host sync and no allocation (so the sequence can be captured)."""

    name: str
    pieces: tuple[tuple[str, Callable[[], object]], ...]

    def run_eager(self, timer: StageTimer) -> None:
        for stage, work in self.pieces:
            with timer.stage(stage):
                work()

    def run(self) -> None:
        """Untimed (inside a CUDA graph capture)."""
        for _, work in self.pieces:
            work()


class ObjectParts:
    """Everything sized by the object count K, and the two steady phases over it."""

    def __init__(self, core: StepCore, num_objects: int) -> None:
        engines, device, dtype = core.engines, core.device, core.dtype
        padded = core.geometry.padded
        height, width = core.geometry.latent
        value_dim = engines.manifest.model_config.value_dim
        self.num_objects = num_objects
        self.aggregator = Aggregator(num_objects, padded, device)
        self.readout = torch.zeros(num_objects, value_dim, height, width, device=device, dtype=dtype)
        self.masks = torch.zeros(num_objects, 1, *padded, device=device, dtype=dtype)
        self.others = torch.zeros_like(self.masks)
        self._total = torch.zeros(1, 1, *padded, device=device, dtype=dtype)
        self.decoder: BoundEngine = bind(
            engines.decoder, {"readout": self.readout, "f16x": core.f16x, "f8": core.f8, "f4": core.f4}, num_objects
        )
        self.value: BoundEngine = bind(
            engines.value_encoder, {"image": core.pre.image, "masks": self.masks, "others": self.others, "f16x": core.f16x}, num_objects
        )
        self.logits = self.decoder.outputs["logits"]
        self.value_out = self.value.outputs["value"]
        self._core = core
        self._outputs: dict[tuple[int, int], OutputMaker] = {}
        self.store = Phase("store", (
            ("memory_write", self.prepare_value_inputs),
            ("value_encoder", self.value.run),
            ("memory_write", lambda: core.bank.commit(core.pending, core.query, self.value_out)),
        ))  # fmt: skip
        self._frames: dict[tuple[int, int], Phase] = {}
        self.graphed: dict[tuple[int, int], GraphedStep] = {}  # per frame size (CUDA graphs)

    def output(self, frame_size: tuple[int, int]) -> OutputMaker:
        maker = self._outputs.get(frame_size)
        if maker is None:
            maker = self._outputs[frame_size] = OutputMaker(self.aggregator.probs, self._core.geometry, frame_size)
        return maker

    def frame(self, frame_size: tuple[int, int]) -> Phase:
        """The steady frame phase for frames of this size (its input is the core's source)."""
        phase = self._frames.get(frame_size)
        if phase is None:
            core, output = self._core, self.output(frame_size)
            phase = self._frames[frame_size] = Phase("frame", (
                ("preprocess", core.normalize),
                ("key_encoder", core.key.run),
                ("memory_read", lambda: core.bank.read(core.query, out=self.readout)),
                ("decoder", self.decoder.run),
                ("aggregate", lambda: self.aggregator.run(self.logits)),
                ("save_decision", self._decide),
                ("postprocess", output.run),
            ))  # fmt: skip
        return phase

    def prepare_value_inputs(self) -> None:
        """masks = each object's probability, others = the sum of the other objects'."""
        self.masks.copy_(self.aggregator.probs[1:])
        torch.sum(self.masks, dim=0, keepdim=True, out=self._total)
        torch.sub(self._total, self.masks, out=self.others)

    def _decide(self) -> None:
        core = self._core
        decision = core.policy.decide(core.pre.image32[0], self.aggregator.object_probs)
        core.pending.copy_(decision)


class StepCore:
    """Fixed buffers, bound engines, memory bank and save rule for one frame geometry."""

    def __init__(
        self,
        engines: EngineSet,
        geometry: Geometry,
        memory: MemoryConfig,
        save: SaveConfig,
        max_objects: int,
    ) -> None:
        self.engines = engines
        self.geometry = geometry
        self.device = engines.device
        self.dtype = engines.dtype
        self.pre = Preprocessor(geometry, self.device, self.dtype)
        self.key: BoundEngine = bind(engines.key_encoder, {"image": self.pre.image}, 1)
        self.query = self.key.outputs["key"]
        self.f16x = self.key.outputs["f16x"]
        self.f8 = self.key.outputs["f8"]
        self.f4 = self.key.outputs["f4"]
        config = engines.manifest.model_config
        height, width = geometry.latent
        self.bank = MemoryBank(memory, config.key_dim, config.value_dim, height, width, max_objects, device=self.device, dtype=self.dtype)
        self.policy = SavePolicy(save, 1, max_objects=max_objects)
        flag = {"device": self.device, "dtype": torch.bool}
        #: The last frame's save decision: its store (run at the start of the next frame) writes.
        self.pending = torch.zeros((), **flag)
        self.mirror = DecisionMirror(self.device)
        self.mirror.watch(self.pending)
        self._parts: dict[int, ObjectParts] = {}
        self._source: torch.Tensor | None = None  # the (H, W, 3) uint8 frame normalize reads

    def parts(self, num_objects: int) -> ObjectParts:
        parts = self._parts.get(num_objects)
        if parts is None:
            parts = self._parts[num_objects] = ObjectParts(self, num_objects)
        return parts

    # ------------------------------------------------------------------ input
    def set_source(self, frame: torch.Tensor, staged: bool) -> None:
        """The frame ``normalize`` reads: ``frame`` itself when it is on the device and
        ``staged`` is False, else its fixed staging buffer (a copy, no sync). Captured
        graphs need the staging buffer: its address is fixed per frame size."""
        height, width = int(frame.shape[0]), int(frame.shape[1])
        self.pre.prepare(height, width)
        if staged or frame.device != self.device:
            self._source = self.pre.stage(frame)
        else:
            self._source = frame

    def normalize(self) -> None:
        assert self._source is not None
        self.pre.normalize(self._source)

    # ------------------------------------------------------------------ non-steady frames
    def first_frame(self, dense: torch.Tensor, num_objects: int) -> None:
        """Frame 0: key, one-hot probabilities of the annotation (Hp, Wp) dense indices,
        value, stored permanently. The source must be set."""
        self.bank.reset(num_objects)
        self.normalize()
        self.key.run()
        parts = self.parts(num_objects)
        parts.aggregator.one_hot(dense)
        self.policy.set_num_objects(num_objects)
        self.policy.observe_first(self.pre.image32[0], parts.aggregator.object_probs)
        self._store_now(parts, permanent=True)

    def annotated_frame(self, dense: torch.Tensor, old_objects: int, added: int, permanent: bool) -> torch.Tensor:
        """A later frame with an annotation: predict with the objects known so far, add the
        new ones (zero rows), overwrite the annotated pixels, store. Returns the
        prediction before the overwrite, (K+1, 1, Hp, Wp), for the output."""
        self.normalize()
        self.key.run()
        old = self.parts(old_objects)
        self.bank.read(self.query, out=old.readout)
        old.decoder.run()
        old.aggregator.run(old.logits)
        parts = old
        if added:
            self.bank.add_objects(added)
            self.policy.set_num_objects(old_objects + added)
            parts = self.parts(old_objects + added)
            parts.aggregator.probs.zero_()
            parts.aggregator.probs[: old_objects + 1].copy_(old.aggregator.probs)
        predicted = parts.aggregator.probs.clone()
        parts.aggregator.probs.copy_(overwrite(predicted, dense))
        # The rule sees the annotated frame (its series and cooldown advance); the frame
        # is stored whatever it decides.
        self.policy.decide(self.pre.image32[0], parts.aggregator.object_probs)
        self._store_now(parts, permanent)
        return predicted

    def _store_now(self, parts: ObjectParts, permanent: bool) -> None:
        parts.prepare_value_inputs()
        parts.value.run()
        self.bank.add(self.query, parts.value_out, permanent=permanent)
        self.clear_pending()

    def clear_pending(self) -> None:
        """Nothing to store next frame (this frame was stored already, or was the last)."""
        self.pending.zero_()

    # ------------------------------------------------------------------ steady phases
    def run_store(self, num_objects: int, timer: StageTimer) -> None:
        """Store the previous frame, masked by ``pending`` (see :class:`ObjectParts`)."""
        self.parts(num_objects).store.run_eager(timer)

    def run_frame(self, num_objects: int, frame_size: tuple[int, int], timer: StageTimer) -> torch.Tensor:
        """One steady frame; returns the (K+1, H, W) output (a view of a fixed buffer)."""
        parts = self.parts(num_objects)
        parts.frame(frame_size).run_eager(timer)
        return parts.output(frame_size).output

    def graphed_step(self, num_objects: int, frame_size: tuple[int, int], pool: Any) -> GraphedStep:
        """The whole steady step as one CUDA graph, the store in a conditional node on
        ``pending`` (every engine must be capturable: the session checks)."""
        parts = self.parts(num_objects)
        step = parts.graphed.get(frame_size)
        if step is None:
            step = parts.graphed[frame_size] = GraphedStep(parts.store, parts.frame(frame_size), self.pending, pool)
        return step

"""One video stream: input checks, the user's object ids, and the per-frame schedule.

The work itself is the step core's (:mod:`eamstcn.runtime.step_core`): fixed buffers,
engines bound once per object count K, the memory bank and the save rule. This module
decides what runs when (docs/ARCHITECTURE.md):

- t = 0: key encoder, value encoder from the given mask, store permanently;
- a frame with an annotation (new objects or corrections): predict, merge, store (may
  read the device and allocate: annotated frames are rare);
- a steady frame t: first the store of frame t-1 if its save decision (made on the
  device at t-1) says so; then key encoder -> memory read -> decoder -> aggregation ->
  output, and the save rule's decision for frame t, left on the device. Storing frame
  t-1 at the start of t, before t's read, keeps exactly the memory the original
  schedule (store at the end of t-1) has. The host learns a decision without waiting
  (:mod:`eamstcn.runtime.decision`); until it knows, it runs the store masked by the
  device flag. The last frame of a file is never stored.

A steady frame takes one of two paths, fixed at start-up:

- **one CUDA graph** (CUDA, every engine capturable: torch or TensorRT, and a torch with
  conditional nodes): the store of frame t-1 and frame t are one graph, the store inside
  a conditional node on the device's decision (:mod:`eamstcn.runtime.cuda_graphs`); the
  host does not take part in the decision at all.
- **eager, the store decided by the host** (everywhere else: the CPU, ONNX Runtime): the
  phases run op by op; the store of t-1 runs unless the host already knows the device
  decided against it, and then masked by the device's flag, so it is exact either way.

A capture that fails moves the session to the eager path for good, with one note.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from eamstcn.runtime.config import MemoryConfig, SaveConfig
from eamstcn.runtime.cuda_graphs import EAGER, ONE_GRAPH, CaptureError, conditional_nodes_available, new_pool
from eamstcn.runtime.engines.base import EngineSet
from eamstcn.runtime.geometry import Geometry
from eamstcn.runtime.objects import ObjectError, ObjectRegistry, one_hot, overwrite, to_graph_size
from eamstcn.runtime.postprocess import to_frame_size
from eamstcn.runtime.step_core import StepCore
from eamstcn.runtime.timing import STAGES, StageTimer, StepStats

__all__ = ["DEFAULT_MAX_OBJECTS", "STAGES", "Session", "SessionError", "StepStats"]

#: Objects a bank holds room for when neither the manifest nor the caller says.
DEFAULT_MAX_OBJECTS = 8


class SessionError(ValueError):
    """A frame or mask the session cannot use; the message is one line meant for the user."""


@dataclass
class _StreamState:
    """What belongs to one stream besides the core's buffers (cleared by :meth:`Session.reset`)."""

    frame_index: int = 0
    frame_shape: tuple[int, int] | None = None  # (H, W) of frame 0
    permanent_frames: int = 0
    pending: bool = False  # the last frame's store (decided on the device) has not run yet
    output_size: tuple[int, int] | None = None  # (H, W) of the last steady output


class Session:
    """Segments the objects of one stream, frame by frame.

    Args:
        engines: the three engines (``open_engines``); their manifest fixes the frame size.
        memory: memory bank configuration (capacity, top-k, eviction).
        save: save rule configuration (fixed / adaptive).
        max_objects: objects the bank makes room for; defaults to the manifest's
            ``max_objects`` (the engines' limit), else :data:`DEFAULT_MAX_OBJECTS`.
        timing: collect per-stage timings into :attr:`last_stats` (CUDA events on CUDA;
            reading them waits for the device once per frame).
        cuda_graphs: run each steady frame as one CUDA graph where the engines allow it;
            default: on CUDA. Timing does not turn it off (what is timed is the mode
            users run): a graphed frame is then one stage, "step". For a per-stage
            breakdown on CUDA pass ``cuda_graphs=False`` (an eager breakdown).
    """

    def __init__(
        self,
        engines: EngineSet,
        memory: MemoryConfig | None = None,
        save: SaveConfig | None = None,
        max_objects: int | None = None,
        timing: bool = False,
        cuda_graphs: bool | None = None,
    ) -> None:
        self.engines = engines
        self.memory_config = memory or MemoryConfig()
        self.save_config = save or SaveConfig()
        manifest = engines.manifest
        self.max_objects = max_objects or manifest.max_objects or DEFAULT_MAX_OBJECTS
        if manifest.max_objects is not None and self.max_objects > manifest.max_objects:
            raise SessionError(f"max_objects {self.max_objects} exceeds the engines' limit of {manifest.max_objects}")
        self.device = engines.device
        self.dtype = engines.dtype
        self.frame_size = manifest.frame_size
        cuda = self.device.type == "cuda"
        if cuda_graphs and not cuda:
            raise SessionError("CUDA graphs need a CUDA device")
        self.cuda_graphs = cuda and (cuda_graphs if cuda_graphs is not None else True)
        self._stream = torch.cuda.Stream(self.device) if cuda else None
        self.timer = StageTimer(self.device, timing)
        self.last_stats: StepStats | None = None
        #: Stores run before the host knew the decision (masked by the device flag).
        self.speculative_stores = 0
        #: Store phases the host enqueued (speculative ones included; a store inside the
        #: one-graph step runs on the device's decision and is not counted here).
        self.store_runs = 0
        #: Why a faster path was not taken (one line each).
        self.notes: list[str] = []
        self._graphed = self.cuda_graphs and self._can_graph()
        self._pool = new_pool() if self._graphed else None
        self.objects = ObjectRegistry(self.device, self.max_objects)
        self._core: StepCore | None = None
        self._state = _StreamState()

    # ------------------------------------------------------------------ public
    @property
    def num_objects(self) -> int:
        return len(self.objects)

    @property
    def step_mode(self) -> str:
        """How steady frames run: ``ONE_GRAPH`` (the whole step one CUDA graph, the store
        in a conditional node) or ``EAGER`` (op by op, the store decided by the host).
        Known at start-up; becomes ``EAGER`` if the capture fails (see :attr:`notes`)."""
        return ONE_GRAPH if self._graphed else EAGER

    @property
    def object_ids(self) -> tuple[int, ...]:
        """The user's object ids, in the order of probability rows 1..K."""
        return tuple(self.objects.ids)

    @property
    def frame_index(self) -> int:
        """Index of the next frame :meth:`step` will process."""
        return self._state.frame_index

    @property
    def memory_frames(self) -> int:
        """Frames in the bank's regular slots, the last frame's pending store included.
        Reads the device (call between frames, not in a timed loop)."""
        core = self._core
        if core is None:
            return 0
        size = core.bank.size
        if self._pending_stores():
            size = min(size + 1, core.bank.capacity)
        return size

    @property
    def stored_frames(self) -> int:
        """Frames stored in this stream (evicted ones and a pending store included).
        Reads the device (call between frames, not in a timed loop)."""
        core = self._core
        if core is None:
            return 0
        return int(core.bank.writes) + int(self._pending_stores())

    def reset(self) -> None:
        """Forget the stream: memory, objects, the save rule's history. Buffers are kept."""
        if self._core is not None:
            self._core.bank.reset()
            self._core.policy.reset()
            self._core.clear_pending()
        self.objects.reset()
        self._state = _StreamState()
        self.last_stats = None

    def labels(self, probabilities: torch.Tensor) -> torch.Tensor:
        """(K+1, H, W) probabilities -> (H, W) uint8 labels holding the user's object ids.

        The result is a session buffer overwritten by the next call: copy what you keep.
        """
        size = self._state.output_size
        if self._core is None or size is None:
            return self.objects.id_of_dense[probabilities.argmax(dim=0)]
        return self._core.parts(self.num_objects).output(size).labels(probabilities, self.objects.id_of_dense)

    @torch.no_grad()  # not inference_mode: the bank's buffers must stay writable by reset()
    def step(self, frame: torch.Tensor, new_masks: torch.Tensor | None = None, is_last: bool = False) -> torch.Tensor:
        """Process one frame.

        Args:
            frame: (H, W, 3) uint8 RGB, on any device.
            new_masks: optional (H, W) uint8 object ids (0 = no annotation here). Required
                on the first frame. Later, new ids add objects; known ids overwrite the
                prediction where they are drawn; elsewhere predictions are kept.
            is_last: the last frame of a file: it is never stored into memory.
        Returns:
            (K+1, H, W) float32 probabilities at the frame's own size, on the engines'
            device; row 0 is the background, row k the object ``object_ids[k-1]``. On
            steady frames it is a view of a session buffer, overwritten by the next step.
        """
        state = self._state
        height, width = self._check_input(frame, new_masks)
        timer = self.timer
        with self._on_stream():
            timer.begin()
            if state.frame_index == 0:
                assert new_masks is not None
                output, saved = self._first(frame, new_masks), True
            elif new_masks is not None:
                if state.pending:
                    self._store_pending()
                output, saved = self._annotated(frame, new_masks), True
            else:
                output = self._steady(frame, (height, width), is_last)
                saved = self._decided_to_save() if timer.enabled and not is_last else False
            stages, total = timer.finish()
        if timer.enabled:
            self.last_stats = StepStats(
                frame=state.frame_index,
                stages=stages,
                total_ms=total,
                saved=saved,
                memory_frames=self.memory_frames,
                objects=self.num_objects,
            )
        state.frame_index += 1
        return output

    # ------------------------------------------------------------------ schedule
    def _first(self, frame: torch.Tensor, new_masks: torch.Tensor) -> torch.Tensor:
        state = self._state
        with self.timer.stage("preprocess"):
            dense, _ = self._register(new_masks, first=True)
            core = self._ensure_core(frame)
            core.set_source(frame, staged=self._graphed)
            dense_small = to_graph_size(dense, core.geometry.size)
        with self.timer.stage("value_encoder"):
            core.first_frame(dense_small, self.num_objects)
        state.frame_shape = (int(frame.shape[0]), int(frame.shape[1]))
        return one_hot(dense, self.num_objects).squeeze(1)

    def _annotated(self, frame: torch.Tensor, new_masks: torch.Tensor) -> torch.Tensor:
        """A later frame with an annotation (new objects or corrections): not steady."""
        state, core = self._state, self._core
        assert core is not None
        with self.timer.stage("preprocess"):
            old_objects = self.num_objects
            dense, added = self._register(new_masks, first=False)
            core.set_source(frame, staged=self._graphed)
            dense_small = to_graph_size(dense, core.geometry.size)
        # A frame that brings new objects or corrections is ground truth: keep it
        # permanently while at least one slot stays replaceable.
        permanent = state.permanent_frames < self.memory_config.capacity - 1
        with self.timer.stage("value_encoder"):
            predicted = core.annotated_frame(dense_small, old_objects, added, permanent)
        state.permanent_frames += int(permanent)
        with self.timer.stage("postprocess"):
            # Memory and the save rule got the annotation at the graphs' size; the output
            # merges it at the frame's own size (exact, no blur).
            output = to_frame_size(predicted, core.geometry, (int(frame.shape[0]), int(frame.shape[1])))
            return overwrite(output.unsqueeze(1), dense).squeeze(1)

    def _steady(self, frame: torch.Tensor, frame_size: tuple[int, int], is_last: bool) -> torch.Tensor:
        core, state = self._core, self._state
        assert core is not None
        core.set_source(frame, staged=self._graphed)
        if self._graphed:
            try:
                core.graphed_step(self.num_objects, frame_size, self._pool).run(self.timer, store_due=state.pending)
            except CaptureError as error:  # nothing ran: this frame goes the eager way
                self._graphed = False
                self._note(f"CUDA graph capture failed ({error}): eager steps, the store decided by the host")
        if not self._graphed:
            if state.pending:
                self._store_pending()
            core.run_frame(self.num_objects, frame_size, self.timer)
            # Outside any graph: an async copy of the decision to pinned memory, an event.
            core.mirror.publish()
            core.mirror.record()
        if is_last:
            core.clear_pending()
        state.pending = not is_last
        state.output_size = frame_size
        return core.parts(self.num_objects).output(frame_size).output

    def _store_pending(self) -> None:
        """Frame t-1's store, at the start of frame t: skipped when the host already knows
        the device decided against it, else run masked by the device's decision."""
        core = self._core
        assert core is not None
        self._state.pending = False
        known = core.mirror.peek()
        if known is False:
            return
        if known is None:
            self.speculative_stores += 1
        self.store_runs += 1
        core.run_store(self.num_objects, self.timer)

    # ------------------------------------------------------------------ helpers
    def _can_graph(self) -> bool:
        """Whether steady frames can be one CUDA graph; if not, a note says why."""
        engines = (self.engines.key_encoder, self.engines.value_encoder, self.engines.decoder)
        if not all(engine.capturable for engine in engines):
            self._note("these engines cannot be captured into a CUDA graph (ONNX Runtime): eager steps, the store decided by the host")
            return False
        if not conditional_nodes_available():
            # Checked at start-up: the API is undocumented and may be missing from a torch.
            self._note(
                "this torch has no CUDA graph conditional nodes (CUDAGraph.begin_capture_to_if_node): "
                "eager steps, the store decided by the host"
            )
            return False
        return True

    def _note(self, message: str) -> None:
        if message not in self.notes:
            self.notes.append(message)

    def _pending_stores(self) -> bool:
        """Whether the last frame's pending store will write (reads the device)."""
        return self._core is not None and bool(self._core.pending)

    def _decided_to_save(self) -> bool:
        assert self._core is not None
        return bool(self._core.policy.decision)

    def _register(self, new_masks: torch.Tensor, first: bool) -> tuple[torch.Tensor, int]:
        try:
            return self.objects.register(new_masks.to(self.device, non_blocking=True), first)
        except ObjectError as error:
            raise SessionError(str(error)) from None

    def _ensure_core(self, frame: torch.Tensor) -> StepCore:
        """The core for this stream's geometry: reused when it has not changed."""
        size = self.frame_size or (int(frame.shape[0]), int(frame.shape[1]))
        if self._core is None or self._core.geometry.size != size:
            self._core = StepCore(self.engines, Geometry.for_size(*size), self.memory_config, self.save_config, self.max_objects)
            # A captured read must have the same shapes every frame: every slot, filled or not.
            self._core.bank.fixed_read_shape = self._graphed
        return self._core

    def _check_input(self, frame: torch.Tensor, new_masks: torch.Tensor | None) -> tuple[int, int]:
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != torch.uint8:
            raise SessionError(f"frames must be (H, W, 3) uint8 RGB, got {tuple(frame.shape)} {frame.dtype}")
        height, width = int(frame.shape[0]), int(frame.shape[1])
        if new_masks is not None and tuple(new_masks.shape) != (height, width):
            raise SessionError(f"mask is {new_masks.shape[1]}x{new_masks.shape[0]} but the frame is {width}x{height}")
        state = self._state
        if state.frame_index == 0 and new_masks is None:
            raise SessionError("the first frame needs a mask")
        if state.frame_index > 0 and self.frame_size is None and state.frame_shape != (height, width):
            # Without a fixed engine frame size the memory's latent size follows frame 0.
            raise SessionError(f"frame size changed from {state.frame_shape} to {(height, width)} mid-stream")
        return height, width

    @contextmanager
    def _on_stream(self) -> Iterator[None]:
        """On CUDA: run on the session's stream, ordered after the caller's stream (which
        uploaded the frame) and before what the caller does next. No host sync."""
        if self._stream is None:
            yield
            return
        caller = torch.cuda.current_stream(self.device)
        self._stream.wait_stream(caller)
        with torch.cuda.stream(self._stream):
            yield
        caller.wait_stream(self._stream)


"""One video stream through the three engines, the memory bank and the save rule.

Schedule (docs/ARCHITECTURE.md): t = 0 key encoder, value encoder from the given mask,
store permanently; t >= 1 key encoder -> memory read -> decoder -> sigmoid -> soft
aggregation -> output, then the save rule; a saved frame's value is encoded from this
frame's ``f16x`` and the aggregated probabilities (no second key pass). The last frame
of a file is never stored.

All pre/post-processing runs on the engines' device in torch; no numpy per frame.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from eamstcn.ops import pad_amounts, pad_to_multiple, normalize_image, soft_aggregate, unpad
from eamstcn.runtime.config import MemoryConfig, SaveConfig
from eamstcn.runtime.engines.base import EngineSet
from eamstcn.runtime.memory import MemoryBank
from eamstcn.runtime.save_policy import SavePolicy
from eamstcn.runtime.timing import STAGES, StageTimer, StepStats

__all__ = ["STAGES", "Session", "SessionError", "StepStats"]

#: Objects a bank holds room for when neither the manifest nor the caller says.
DEFAULT_MAX_OBJECTS = 8


class SessionError(ValueError):
    """A frame or mask the session cannot use; the message is one line meant for the user."""


@dataclass
class _StreamState:
    """Everything that belongs to one stream (cleared by :meth:`Session.reset`)."""

    frame_index: int = 0
    object_ids: list[int] = field(default_factory=list)  # dense index k-1 -> the user's id
    frame_shape: tuple[int, int] | None = None  # (H, W) of frame 0
    permanent_frames: int = 0
    stored_frames: int = 0  # total writes (the bank's size saturates at its capacity)


class Session:
    """Segments the objects of one stream, frame by frame.

    Args:
        engines: the three engines (``open_engines``); their manifest fixes the frame size.
        memory: memory bank configuration (capacity, top-k, eviction).
        save: save rule configuration (fixed / adaptive).
        max_objects: objects the bank makes room for; defaults to the manifest's
            ``max_objects`` (the engines' limit), else :data:`DEFAULT_MAX_OBJECTS`.
        timing: collect per-stage timings into :attr:`last_stats` (CUDA events on CUDA).
    """

    def __init__(
        self,
        engines: EngineSet,
        memory: MemoryConfig | None = None,
        save: SaveConfig | None = None,
        max_objects: int | None = None,
        timing: bool = False,
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
        self.timer = StageTimer(self.device, timing)
        self.last_stats: StepStats | None = None
        self.policy = SavePolicy(self.save_config, 1)
        self._bank: MemoryBank | None = None
        self._state = _StreamState()
        # object id (0..255) -> dense index; rebuilt when objects are added.
        self._dense_of_id = torch.zeros(256, dtype=torch.long, device=self.device)
        self._id_of_dense = torch.zeros(1, dtype=torch.uint8, device=self.device)
        # normalize_image builds its mean/std with torch.tensor(..., device=...): on CUDA a
        # blocking host-to-device copy per frame. It is affine, so take it once as
        # x * scale + shift (same function, same constants) and keep both on the device.
        shift = normalize_image(torch.zeros(3, 1, 1))
        self._norm_shift = shift.to(self.device)
        self._norm_scale = (normalize_image(torch.ones(3, 1, 1)) - shift).to(self.device)

    # ------------------------------------------------------------------ public
    @property
    def num_objects(self) -> int:
        return len(self._state.object_ids)

    @property
    def object_ids(self) -> tuple[int, ...]:
        """The user's object ids, in the order of probability rows 1..K."""
        return tuple(self._state.object_ids)

    @property
    def frame_index(self) -> int:
        """Index of the next frame :meth:`step` will process."""
        return self._state.frame_index

    @property
    def memory_frames(self) -> int:
        return 0 if self._bank is None else self._bank.size

    @property
    def stored_frames(self) -> int:
        """Frames written into memory so far in this stream (evicted ones included)."""
        return self._state.stored_frames

    def reset(self) -> None:
        """Forget the stream: memory, objects, the save rule's history."""
        if self._bank is not None:
            self._bank.reset()
        self.policy.reset()
        self._state = _StreamState()
        self.last_stats = None

    def labels(self, probabilities: torch.Tensor) -> torch.Tensor:
        """(K+1, H, W) probabilities -> (H, W) uint8 labels holding the user's object ids."""
        return self._id_of_dense[probabilities.argmax(dim=0)]

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
            device; row 0 is the background, row k the object ``object_ids[k-1]``.
        """
        state = self._state
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != torch.uint8:
            raise SessionError(f"frames must be (H, W, 3) uint8 RGB, got {tuple(frame.shape)} {frame.dtype}")
        height, width = int(frame.shape[0]), int(frame.shape[1])
        if new_masks is not None and tuple(new_masks.shape) != (height, width):
            raise SessionError(f"mask is {new_masks.shape[1]}x{new_masks.shape[0]} but the frame is {width}x{height}")
        first = state.frame_index == 0
        if first and new_masks is None:
            raise SessionError("the first frame needs a mask")
        if first:
            state.frame_shape = (height, width)
        elif self.frame_size is None and state.frame_shape != (height, width):
            # Without a fixed engine frame size the memory's latent size follows frame 0.
            raise SessionError(f"frame size changed from {state.frame_shape} to {(height, width)} mid-stream")
        timer = self.timer
        timer.begin()

        with timer.stage("preprocess"):
            image, size = self._prepare_image(frame)
            annotation = None
            if new_masks is not None:
                annotation = self._register_objects(new_masks.to(self.device, non_blocking=True))
            if first:
                self._ensure_bank(image.shape[-2:])
                self.policy.reset()
                self.policy.set_num_objects(self.num_objects)
            dense_small = None if annotation is None else self._to_graph_size(annotation[0], size)

        with timer.stage("key_encoder"):
            encoded = self.engines.key_encoder(image=image)
            key, f16x, f8, f4 = encoded["key"], encoded["f16x"], encoded["f8"], encoded["f4"]

        num_objects = self.num_objects
        predicted = None  # (K+1, 1, Hp, Wp) as the network saw it; the output is made from it
        if first:
            assert dense_small is not None
            probs = self._one_hot(dense_small, num_objects)  # (K+1, 1, Hp, Wp)
        else:
            assert self._bank is not None
            with timer.stage("memory_read"):
                readout = self._bank.read(key)
            with timer.stage("decoder"):
                logits = self.engines.decoder(readout=readout, f16x=f16x, f8=f8, f4=f4)["logits"]
            with timer.stage("aggregate"):
                _, probs = soft_aggregate(torch.sigmoid(logits.float()))
                predicted = probs
                if dense_small is not None:
                    predicted = self._add_object_rows(probs, added=annotation[1])  # type: ignore[index]
                    # Memory and the save rule get the annotation at the graphs' size; the
                    # output merges it at the frame's own size below (exact, no blur).
                    probs = _overwrite(predicted, dense_small)

        saved = False
        object_probs = probs[1:]  # (K, 1, Hp, Wp)
        if first:
            self.policy.observe_first(image[0], object_probs[:, 0])
            self._store(image, object_probs, f16x, key, permanent=True)
            saved = True
        elif not is_last:
            with timer.stage("save_decision"):
                wanted = self.policy.should_save(state.frame_index, image[0], object_probs[:, 0])
            annotated = dense_small is not None
            if wanted or annotated:
                with timer.stage("value_encoder"):
                    # A frame that brings new objects or corrections is ground truth: keep
                    # it permanently while at least one slot stays replaceable.
                    permanent = annotated and state.permanent_frames < self.memory_config.capacity - 1
                    self._store(image, object_probs, f16x, key, permanent=permanent)
                saved = True
            elif self.memory_config.temporary_slot:
                with timer.stage("value_encoder"):
                    self._set_temporary(image, object_probs, f16x, key)

        with timer.stage("postprocess"):
            if first:
                output = self._one_hot(annotation[0], num_objects).squeeze(1)  # type: ignore[index]
            else:
                assert predicted is not None
                output = self._to_frame_size(predicted, size, (height, width))
                if annotation is not None:
                    output = _overwrite(output.unsqueeze(1), annotation[0]).squeeze(1)

        stages, total = timer.finish()
        if timer.enabled:
            self.last_stats = StepStats(
                frame=state.frame_index,
                stages=stages,
                total_ms=total,
                saved=saved,
                memory_frames=self.memory_frames,
                objects=num_objects,
            )
        state.frame_index += 1
        return output

    # ------------------------------------------------------------------ internals
    def _prepare_image(self, frame: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """(H, W, 3) uint8 -> normalised, padded (1, 3, Hp, Wp) in the engines' dtype, and
        the size (h, w) the frame was resized to before padding."""
        x = frame.to(self.device, non_blocking=True).permute(2, 0, 1).unsqueeze(0).float().div_(255.0)
        size = self.frame_size or (int(frame.shape[0]), int(frame.shape[1]))
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=False)
        x, _ = pad_to_multiple(torch.addcmul(self._norm_shift, x, self._norm_scale))
        return x.to(self.dtype).contiguous(), size

    def _ensure_bank(self, padded: torch.Size) -> None:
        """Build the bank for this latent size, or reuse the one already allocated."""
        height, width = int(padded[0]) // 16, int(padded[1]) // 16
        config = self.engines.manifest.model_config
        bank = self._bank
        if bank is not None and (bank._height, bank._width) == (height, width):  # noqa: SLF001
            bank.reset(self.num_objects)
            return
        self._bank = MemoryBank(
            self.memory_config,
            config.key_dim,
            config.value_dim,
            height,
            width,
            self.max_objects,
            num_objects=self.num_objects,
            device=self.device,
            dtype=self.dtype,
        )

    def _register_objects(self, ids: torch.Tensor) -> tuple[torch.Tensor, int]:
        """User ids (H, W) -> dense indices (H, W) long (0 = no annotation), and how many
        objects are new. New ids get the next dense indices, in increasing id order."""
        present = torch.unique(ids).tolist()  # one small host sync, only on annotated frames
        present = [int(v) for v in present if v != 0]
        if not present and self._state.frame_index == 0:
            raise SessionError("the first mask has no object (every pixel is background)")
        new = [v for v in present if v not in self._state.object_ids]
        total = self.num_objects + len(new)
        if total > self.max_objects:
            raise SessionError(f"{total} objects requested; these engines/bank take at most {self.max_objects}")
        if new:
            self._state.object_ids.extend(new)
            table = torch.zeros(256, dtype=torch.long)
            table[torch.tensor(self._state.object_ids)] = torch.arange(1, total + 1)
            self._dense_of_id = table.to(self.device)
            self._id_of_dense = torch.tensor([0, *self._state.object_ids], dtype=torch.uint8, device=self.device)
        return self._dense_of_id[ids.long()], len(new)

    def _to_graph_size(self, dense: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Dense indices (H, W) -> (Hp, Wp): nearest resize to the graph's frame size, zero pad."""
        x = dense[None, None].float()
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="nearest")
        x, _ = pad_to_multiple(x)
        return x[0, 0].long()

    def _one_hot(self, dense: torch.Tensor, num_objects: int) -> torch.Tensor:
        """Dense indices (H, W) -> (K+1, 1, H, W) float32 one-hot (0 is background)."""
        classes = torch.arange(num_objects + 1, device=dense.device).view(-1, 1, 1)
        return (dense.unsqueeze(0) == classes).float().unsqueeze(1)

    def _to_frame_size(self, probs: torch.Tensor, size: tuple[int, int], frame_size: tuple[int, int]) -> torch.Tensor:
        """(K+1, 1, Hp, Wp) -> (K+1, H, W) float32: unpad, then resize to the frame's size."""
        x = unpad(probs, pad_amounts(*size))
        if tuple(x.shape[-2:]) != frame_size:
            x = F.interpolate(x.transpose(0, 1), size=frame_size, mode="bilinear", align_corners=False).transpose(0, 1)
        return x[:, 0].float()

    def _add_object_rows(self, probs: torch.Tensor, added: int) -> torch.Tensor:
        """Prediction (K_old+1, 1, Hp, Wp) -> (K+1, 1, Hp, Wp) for objects added this frame.

        They were not part of the read (the bank holds nothing for them yet), so their
        probability is 0 wherever they are not drawn; the bank and the save rule learn
        the new object count here.
        """
        if not added:
            return probs
        assert self._bank is not None
        self._bank.add_objects(added)
        self.policy.set_num_objects(self.num_objects)
        return torch.cat([probs, probs.new_zeros((added, *probs.shape[1:]))], dim=0)

    def _encode_value(self, image: torch.Tensor, object_probs: torch.Tensor, f16x: torch.Tensor) -> torch.Tensor:
        masks = object_probs.to(self.dtype).contiguous()
        others = (masks.sum(dim=0, keepdim=True) - masks).contiguous()
        return self.engines.value_encoder(image=image, masks=masks, others=others, f16x=f16x)["value"]

    def _store(self, image: torch.Tensor, object_probs: torch.Tensor, f16x: torch.Tensor, key: torch.Tensor, permanent: bool) -> None:
        assert self._bank is not None
        value = self._encode_value(image, object_probs, f16x)
        self._bank.add(key, value, permanent=permanent)
        if self.memory_config.temporary_slot:
            self._bank.clear_temporary()  # this frame is in memory already: no duplicate
        self._state.stored_frames += 1
        self._state.permanent_frames += int(permanent)

    def _set_temporary(self, image: torch.Tensor, object_probs: torch.Tensor, f16x: torch.Tensor, key: torch.Tensor) -> None:
        assert self._bank is not None
        self._bank.set_temporary(key, self._encode_value(image, object_probs, f16x))


def _overwrite(probs: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    """Where ``dense`` (H, W) names an object, make ``probs`` (K+1, 1, H, W) one-hot on it;
    elsewhere keep the prediction (rows of objects added this frame are 0 there)."""
    classes = torch.arange(probs.shape[0], device=probs.device).view(-1, 1, 1, 1)
    annotated = (dense > 0).view(1, 1, *dense.shape)
    one_hot = (dense.view(1, 1, *dense.shape) == classes).to(probs.dtype)
    return torch.where(annotated, one_hot, probs)

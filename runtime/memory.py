"""Bounded, preallocated, device-resident key/value memory (docs/MEMORY.md).

Pure tensors: no files, no network, no numpy. Every buffer is allocated in the
constructor; adding, reading and evicting write into them in place, so memory stays
flat for hours and each frame's work has the same shapes (CUDA-graph friendly).

Nothing in the steady path waits on the device: which slot a frame goes to, how full the
bank is and whether a store happens at all (:meth:`MemoryBank.commit` takes the save
decision as a device flag) are decided by device ops. The host keeps only what it knows
without looking: whether anything was written, and how many frames it made permanent.
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch

from eamstcn.runtime.config import MemoryConfig
from eamstcn.runtime.readout import ReadoutBuffers, gather_readout, slot_mass, topk_weights


class MemoryBank:
    """Keys shared by all objects, values per object, ``capacity`` frame slots.

    Storage, with ``capacity`` slots read by every query and one more, the *scratch*
    slot, that no read sees (a store the device decided against is
    written there, so the work of a frame does not depend on the decision):

    - keys ``(Ck, slots + 1, h*w)`` float32 and their squared norms ``(slots + 1, h*w)``
      float32, whatever the engines' dtype (fp16 squared norms overflow past 65504);
    - values ``(max_objects, slots + 1, h*w, Cv)`` in the engines' dtype, position-major
      so that a read gathers contiguous rows of Cv values;
    - ``valid`` ``(slots + 1, h*w)`` bool: invalid positions never win the top-k.

    The first frame added is permanent (never evicted); others may be made permanent
    with ``add(..., permanent=True)``. When full, a store replaces the least used (or, by
    config, the oldest) non-permanent slot.
    """

    def __init__(
        self,
        config: MemoryConfig,
        key_dim: int,
        value_dim: int,
        height: int,
        width: int,
        max_objects: int,
        *,
        num_objects: int = 1,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if min(key_dim, value_dim, height, width, max_objects) < 1:
            raise ValueError("key_dim, value_dim, height, width and max_objects must be positive")
        if not 1 <= num_objects <= max_objects:
            raise ValueError(f"num_objects must be in [1, {max_objects}], got {num_objects}")
        if dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise ValueError(f"dtype must be float32, float16 or bfloat16, got {dtype}")
        self.config = config
        self._key_dim, self._value_dim = key_dim, value_dim
        self._height, self._width = height, width
        self._max_objects = max_objects
        self._initial_objects = num_objects
        self._dtype = dtype

        capacity, hw = config.capacity, height * width
        self._read_slots = capacity
        total = self._read_slots + 1  # + the scratch slot
        fp32 = {"device": device, "dtype": torch.float32}
        int64 = {"device": device, "dtype": torch.int64}
        boolean = {"device": device, "dtype": torch.bool}
        self._keys = torch.zeros(key_dim, total, hw, **fp32)
        self._key_sq_norm = torch.zeros(total, hw, **fp32)
        self._values = torch.zeros(max_objects, total, hw, value_dim, device=device, dtype=dtype)
        self._valid = torch.zeros(total, hw, **boolean)
        self._readout = torch.empty(max_objects, value_dim, hw, device=device, dtype=dtype)
        self._device = self._keys.device
        #: Why reads do not use the fused kernel although ``read_kernel`` allowed it, or None.
        self.read_kernel_note: str | None = None
        self._fused = self._fused_read(config, key_dim, value_dim, self._read_slots * hw)
        # The fused kernel never needs the dense (M, N) affinity (672 MB at 64 frames of
        # 480x864): only the torch read gets it.
        self._work = ReadoutBuffers.allocate(
            self._read_slots * hw, hw, config.top_k, key_dim=key_dim, value_dim=value_dim, device=device, dtype=dtype,
            chunk_divides=hw, dense=self._fused is None,
        )  # fmt: skip
        self._partial = self._fused.partial_buffer(hw, self._device) if self._fused is not None else None
        self._key32 = torch.empty(key_dim, hw, **fp32)
        self._key_product = torch.empty(key_dim, hw, **fp32)
        self._new_sq_norm = torch.empty(1, hw, **fp32)

        # Per slot (regular slots first, then the scratch slot), on the device, so
        # that choosing where a frame goes needs no host sync.
        self._permanent = torch.zeros(total, **boolean)
        self._usage = torch.zeros(total, **fp32)  # readout weight mass since written
        self._reads = torch.zeros(total, **fp32)  # reads since written
        self._written_at = torch.zeros(total, **int64)
        self._slot_mass = torch.empty(self._read_slots, **fp32)
        self._slot_of = torch.empty_like(self._work.indices)
        self._score = torch.empty(capacity, **fp32)
        self._protected = torch.empty(capacity, **boolean)
        self._age = torch.empty(capacity, **int64)
        self._oldest = torch.empty(1, **int64)
        self._victim = torch.empty(1, **int64)
        self._slot = torch.empty(1, **int64)  # where a store goes if it happens
        self._target = torch.empty(1, **int64)  # where it goes: the slot, or the fallback
        self._has_room = torch.empty((), **boolean)
        self._grows = torch.empty((), **boolean)
        self._size = torch.zeros((), **int64)  # regular slots filled
        self._writes = torch.zeros((), **int64)  # frames stored (evicted ones included)
        self._never = torch.tensor(torch.iinfo(torch.int64).max, **int64)
        self._last_resort = torch.tensor([torch.finfo(torch.float32).max], **fp32)
        self._true = torch.tensor(True, **boolean)
        # A store decided against goes to the scratch slot, which no read sees.
        self._fallback = torch.tensor([total - 1], **int64)

        self._num_objects = num_objects
        self._num_permanent = 0
        self._written = False
        # Regular slots possibly filled, known on the host without looking: every store
        # that ran counts (a store the device decided against makes it an overestimate).
        self._fill_bound = 0
        #: Read every slot, filled or not (CUDA graphs need the same shapes every frame);
        #: when False, reads skip the slots no store has reached yet.
        self.fixed_read_shape = False

    # ------------------------------------------------------------------ properties
    @property
    def size(self) -> int:
        """Frames stored in the regular slots. Syncs."""
        return int(self._size)

    @property
    def writes(self) -> torch.Tensor:
        """0-d int64 device tensor: frames stored since the reset, evicted ones included."""
        return self._writes

    @property
    def capacity(self) -> int:
        return self.config.capacity

    @property
    def num_objects(self) -> int:
        return self._num_objects

    @property
    def height(self) -> int:
        """h: the key/value grid height (padded frame height / 16)."""
        return self._height

    @property
    def width(self) -> int:
        return self._width

    @property
    def key_dim(self) -> int:
        return self._key_dim

    @property
    def value_dim(self) -> int:
        return self._value_dim

    @property
    def max_objects(self) -> int:
        return self._max_objects

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def dtype(self) -> torch.dtype:
        """The values' dtype, which is the engines' (keys are stored in float32)."""
        return self._dtype

    @property
    def nbytes(self) -> int:
        """Bytes held on the device by the bank, work buffers included."""
        partial = self._partial.nbytes if self._partial is not None else 0
        return sum(t.nbytes for t in self._tensors()) + self._work.nbytes + partial

    # ------------------------------------------------------------------ stream control
    def reset(self, num_objects: int | None = None) -> None:
        """Forget everything (a new stream); buffers are kept and zeroed."""
        num_objects = self._initial_objects if num_objects is None else num_objects
        if not 1 <= num_objects <= self._max_objects:
            raise ValueError(f"num_objects must be in [1, {self._max_objects}], got {num_objects}")
        for tensor in (self._keys, self._key_sq_norm, self._values, self._valid, self._permanent, self._usage,
                       self._reads, self._written_at, self._size, self._writes):  # fmt: skip
            tensor.zero_()
        self._num_objects = num_objects
        self._num_permanent = 0
        self._written = False
        self._fill_bound = 0

    def add_objects(self, count: int) -> int:
        """Track ``count`` more objects from now on; returns the new number of objects.

        Frames already stored hold zero values for them.
        """
        total = self._num_objects + count
        if count < 1 or total > self._max_objects:
            raise ValueError(f"cannot add {count} objects to {self._num_objects} (max_objects={self._max_objects})")
        self._values[self._num_objects : total].zero_()  # earlier streams may have left values there
        self._num_objects = total
        return total

    # ------------------------------------------------------------------ writing
    def add(self, key: torch.Tensor, value: torch.Tensor, permanent: bool = False) -> torch.Tensor:
        """Store one frame unconditionally; the first frame of a stream is always permanent.

        Args:
            key: (1, Ck, h, w). value: (K, Cv, h, w), K = ``num_objects``; both in the
                bank's dtype on its device.
        Returns:
            The slot written, a 0-d int64 tensor on the bank's device (chosen there,
            without a host sync). It is a view overwritten by the next store: ``int()``
            it (a sync) to keep it.
        """
        self._check_frame(key, value)
        permanent = permanent or not self._written
        self._refuse_when_all_permanent()
        self._store(self._true, key, value, permanent)
        self._num_permanent += int(permanent)
        return self._target[0]

    def commit(self, flag: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> None:
        """Store one frame if the 0-d bool device tensor ``flag`` holds, without reading it.

        The same device work runs either way; when ``flag`` is false the frame goes to
        the scratch slot, which no read sees. Shapes as :meth:`add`.
        """
        self._check_frame(key, value)
        self._refuse_when_all_permanent()
        self._store(flag, key, value, permanent=False)

    # ------------------------------------------------------------------ reading
    def read(self, query_key: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Top-k readout of the query frame and, in usage mode, usage bookkeeping.

        Args:
            query_key: (1, Ck, h, w), any float dtype.
            out: optional (K, Cv, h, w) output in the bank's dtype (e.g. the decoder's
                bound input); by default a bank buffer overwritten by the next read.
        Returns:
            (K, Cv, h, w) readout.
        """
        if not self._written:
            raise RuntimeError("memory is empty: add the first frame before reading")
        hw = self._height * self._width
        if tuple(query_key.shape) != (1, self._key_dim, self._height, self._width):
            raise ValueError(f"query_key must have shape {(1, self._key_dim, self._height, self._width)}, got {tuple(query_key.shape)}")
        k = self._num_objects
        if out is None:
            out = self._readout[:k].view(k, self._value_dim, self._height, self._width)
        elif tuple(out.shape) != (k, self._value_dim, self._height, self._width) or out.dtype != self._dtype:
            raise ValueError(f"out must be {self._dtype} of shape {(k, self._value_dim, self._height, self._width)}")
        slots, work = self._slots_to_read(), self._work
        keys = self._keys[:, :slots].reshape(self._key_dim, slots * hw)
        sq_norm = self._key_sq_norm[:slots].view(slots * hw)
        valid = self._valid[:slots].view(slots * hw)
        query = query_key.view(self._key_dim, hw)
        values = self._values[:k, :slots].view(k, slots * hw, self._value_dim)
        if self._fused is not None:
            if query.dtype != torch.float32:
                query = work.query.copy_(query)
            bias = work.bias[: slots * hw]  # the front: reads may skip unfilled slots
            torch.where(valid, sq_norm, work.masked, out=bias)
            self._fused(keys, bias, query, values, out.view(k, self._value_dim, hw), work.weights, work.indices, self._partial)
            weights, indices = work.weights, work.indices
        else:
            weights, indices = topk_weights(keys, sq_norm, valid, query, work)
            gather_readout(values, weights, indices, out.view(k, self._value_dim, hw), work)
        if self.config.eviction == "usage":
            slot_mass(indices, weights, hw, self._slot_of, self._slot_mass)
            self._usage[: self._read_slots].add_(self._slot_mass)
            self._reads.add_(1.0)  # slots not yet valid are reset when written
        return out

    def _slots_to_read(self) -> int:
        """All slots, or the front that stores have reached (never fewer than top_k
        positions)."""
        if self.fixed_read_shape:
            return self._read_slots
        filled = max(1, min(self._fill_bound, self.capacity))
        if filled * self._height * self._width < self.config.top_k:
            return self._read_slots
        return filled

    @property
    def read_kernel(self) -> str:
        """"triton" when reads run the fused kernel, else "torch"."""
        return "torch" if self._fused is None else "triton"

    # ------------------------------------------------------------------ internals
    def _fused_read(self, config: MemoryConfig, key_dim: int, value_dim: int, num_memory: int) -> Any:
        """The fused Triton read when config, device and shapes allow it and a warm-up
        read (compile + a check against the torch read) succeeds, else None (with
        ``read_kernel`` "auto": the torch read, the reason in :attr:`read_kernel_note`).

        Triton's interpreter (TRITON_INTERPRET=1) runs it on the CPU, for tests only."""
        if config.read_kernel == "torch":
            return None
        interpreted = config.read_kernel == "triton" and os.environ.get("TRITON_INTERPRET") == "1"
        runs_here = self._device.type == "cuda" or interpreted
        problem = None
        if not runs_here:
            problem = "needs a CUDA device"
        else:
            try:
                from eamstcn.runtime.readout_triton import FusedTopkRead, triton_problem
            except ImportError as error:
                problem = f"needs triton ({error})"
            else:
                problem = triton_problem()
                if problem is None and (not FusedTopkRead.supports(key_dim, value_dim, config.top_k) or num_memory < config.top_k):
                    problem = f"does not take key_dim {key_dim}, value_dim {value_dim}, top_k {config.top_k}"
        fused = None
        if problem is None:
            fused = FusedTopkRead(key_dim, value_dim, config.top_k, keys_fp16=self._dtype == torch.float16)
            try:
                fused.warm_up(self._device)
            except Exception as error:  # noqa: BLE001 - any compile or launch failure: the torch read
                text = str(error).strip()
                problem = f"failed its warm-up read ({text.splitlines()[0] if text else type(error).__name__})"
                fused = None
        if problem is None:
            return fused
        if config.read_kernel == "triton":
            raise ValueError(f"read_kernel 'triton' {problem}")
        if runs_here:  # on a CPU the torch read is simply the read: nothing to report
            self.read_kernel_note = f"fused Triton read {problem}: the torch read runs"
        return None

    def _store(self, flag: torch.Tensor, key: torch.Tensor, value: torch.Tensor, permanent: bool) -> None:
        """Write to a free slot, else to the victim, if ``flag``; else to the fallback slot.
        Every op runs whatever the flag: the device picks the target."""
        self._choose_victim()
        torch.lt(self._size, self.capacity, out=self._has_room)
        torch.where(self._has_room, self._size, self._victim, out=self._slot)
        torch.where(flag, self._slot, self._fallback, out=self._target)
        target = self._target
        self._write(target, key, value)
        self._valid.index_fill_(0, target, True)
        self._permanent.index_fill_(0, target, permanent)
        self._usage.index_fill_(0, target, 0.0)
        self._reads.index_fill_(0, target, 0.0)
        self._written_at.index_copy_(0, target, self._writes.view(1))
        self._writes.add_(flag)
        torch.logical_and(flag, self._has_room, out=self._grows)
        self._size.add_(self._grows)
        self._written = True
        self._fill_bound += 1

    def _write(self, index: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> None:
        """Key, its squared norm (float32) and the values into slot ``index`` (1,) int64."""
        hw = self._height * self._width
        key_flat = key.view(self._key_dim, hw)
        if key_flat.dtype != torch.float32:
            key_flat = self._key32.copy_(key_flat)
        self._keys.index_copy_(1, index, key_flat.unsqueeze(1))
        torch.mul(key_flat, key_flat, out=self._key_product)
        torch.sum(self._key_product, dim=0, keepdim=True, out=self._new_sq_norm)
        self._key_sq_norm.index_copy_(0, index, self._new_sq_norm)
        k = self._num_objects
        # (K, Cv, h, w) -> (K, 1, h*w, Cv): position-major rows, transposed on the way in.
        rows = value.view(k, self._value_dim, hw).transpose(1, 2).unsqueeze(1)
        self._values[:k].index_copy_(1, index, rows)

    def _choose_victim(self) -> None:
        """Write the regular slot to replace into ``_victim``, on the device.

        Usage is the readout weight mass a slot received, divided by the number of reads
        since it was written: the mean weight per read. Raw totals grow with age, so they
        would always evict the newest frames; the mean compares old and new slots fairly.
        A slot not read yet has no evidence, so it is protected, unless every replaceable
        slot is unread; then the oldest goes (which is also the ``oldest`` policy).
        """
        capacity = self.capacity
        permanent = self._permanent[:capacity]
        torch.where(permanent, self._never, self._written_at[:capacity], out=self._age)
        if self.config.eviction == "oldest":
            torch.argmin(self._age, dim=0, keepdim=True, out=self._victim)
            return
        torch.argmin(self._age, dim=0, keepdim=True, out=self._oldest)
        reads = self._reads[:capacity]
        torch.clamp(reads, min=1.0, out=self._score)
        torch.div(self._usage[:capacity], self._score, out=self._score)
        torch.eq(reads, 0.0, out=self._protected)
        self._protected.logical_or_(permanent)
        self._score.masked_fill_(self._protected, math.inf)
        # The oldest replaceable slot scores at most float max, so argmin never lands on
        # an +inf (permanent) slot even when every replaceable slot is unread.
        self._score.scatter_reduce_(0, self._oldest, self._last_resort, reduce="amin")
        torch.argmin(self._score, dim=0, keepdim=True, out=self._victim)

    def _refuse_when_all_permanent(self) -> None:
        # Permanent frames are a subset of the filled slots, so this many fill the bank.
        if self._num_permanent >= self.capacity:
            raise RuntimeError(f"all {self.capacity} memory slots are permanent: nothing can be replaced")

    def _check_frame(self, key: torch.Tensor, value: torch.Tensor) -> None:
        self._check(key, "key", (1, self._key_dim, self._height, self._width))
        self._check(value, "value", (self._num_objects, self._value_dim, self._height, self._width))

    def _check(self, tensor: torch.Tensor, name: str, shape: tuple[int, ...]) -> None:
        if tuple(tensor.shape) != shape:
            raise ValueError(f"{name} must have shape {shape}, got {tuple(tensor.shape)}")
        if tensor.dtype != self._dtype or tensor.device != self._device:
            raise ValueError(f"{name} must be {self._dtype} on {self._device}, got {tensor.dtype} on {tensor.device}")

    def _tensors(self) -> tuple[torch.Tensor, ...]:
        """Every tensor the bank owns besides the readout work buffers (for nbytes and tests)."""
        return (
            self._keys, self._key_sq_norm, self._values, self._valid, self._readout, self._key32, self._key_product,
            self._new_sq_norm, self._permanent, self._usage, self._reads, self._written_at, self._slot_mass,
            self._slot_of, self._score, self._protected, self._age, self._oldest, self._victim, self._slot,
            self._target, self._has_room, self._grows, self._size, self._writes, self._never,
            self._last_resort, self._true, self._fallback,
        )  # fmt: skip

"""Bounded, preallocated, device-resident key/value memory (DESIGN section 3).

Pure tensors: no files, no network, no numpy. Every buffer is allocated in the
constructor; adding, reading and evicting write into them in place, so memory stays
flat for hours and each frame's work has the same shapes (CUDA-graph friendly).
Nothing here waits on the device: the host tracks only counts it already knows.
"""

from __future__ import annotations

import math

import torch

from eamstcn.runtime.config import MemoryConfig
from eamstcn.runtime.readout import ReadoutBuffers, topk_readout


class MemoryBank:
    """Keys shared by all objects, values per object, ``capacity`` frame slots.

    Storage (N = slots * h*w, slots = capacity + 1 with the temporary slot, which is
    the last one): keys ``(Ck, slots, h*w)``, values ``(max_objects, Cv, slots, h*w)``.
    The slot axis sits next to h*w so that ``keys.view(Ck, N)`` and
    ``values[:K].view(K, Cv, N)`` are the readout's operands without a copy.

    The first frame added is permanent (never evicted); others may be made permanent
    with ``add(..., permanent=True)``. When full, :meth:`add` replaces the least used
    (or, by config, the oldest) non-permanent slot.
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

        capacity, hw = config.capacity, height * width
        slots = capacity + int(config.temporary_slot)
        opts = {"device": device, "dtype": dtype}
        self._keys = torch.zeros(key_dim, slots, hw, **opts)
        self._key_sq_norm = torch.zeros(slots, hw, **opts)
        self._values = torch.zeros(max_objects, value_dim, slots, hw, **opts)
        self._valid = torch.zeros(slots, hw, device=device, dtype=torch.bool)
        self._readout = torch.empty(max_objects, value_dim, hw, **opts)
        self._work = ReadoutBuffers.allocate(slots * hw, hw, config.top_k, **opts)
        self._key_product = torch.empty(key_dim, hw, **opts)
        self._new_sq_norm = torch.empty(1, hw, **opts)

        # Per regular slot, on the device, so that choosing a victim needs no host sync.
        counter = {"device": device, "dtype": torch.float32}
        self._permanent = torch.zeros(capacity, device=device, dtype=torch.bool)
        self._usage = torch.zeros(capacity, **counter)  # readout weight mass since written
        self._reads = torch.zeros(capacity, **counter)  # reads since written
        self._written_at = torch.zeros(capacity, device=device, dtype=torch.int64)
        self._slot_mass = torch.empty(slots, **counter)
        self._score = torch.empty(capacity, **counter)
        self._protected = torch.empty(capacity, device=device, dtype=torch.bool)
        self._age = torch.empty(capacity, device=device, dtype=torch.int64)
        self._oldest = torch.empty(1, device=device, dtype=torch.int64)
        self._never = torch.tensor(torch.iinfo(torch.int64).max, device=device)
        self._last_resort = torch.tensor([torch.finfo(torch.float32).max], **counter)
        self._slot_index = torch.zeros(1, device=device, dtype=torch.int64)
        self._temporary_index = torch.tensor([capacity], device=device, dtype=torch.int64)
        self._device = self._keys.device

        self._num_objects = num_objects
        self._size = 0
        self._num_permanent = 0
        self._num_writes = 0
        self._has_temporary = False

    # ------------------------------------------------------------------ properties
    @property
    def size(self) -> int:
        """Frames stored in the regular slots (the temporary slot not counted)."""
        return self._size

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
    def has_temporary(self) -> bool:
        return self._has_temporary

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def dtype(self) -> torch.dtype:
        return self._keys.dtype

    @property
    def nbytes(self) -> int:
        """Bytes held on the device by the bank, work buffers included."""
        return sum(t.nbytes for t in self._tensors()) + self._work.nbytes

    # ------------------------------------------------------------------ stream control
    def reset(self, num_objects: int | None = None) -> None:
        """Forget everything (a new stream); buffers are kept and zeroed."""
        num_objects = self._initial_objects if num_objects is None else num_objects
        if not 1 <= num_objects <= self._max_objects:
            raise ValueError(f"num_objects must be in [1, {self._max_objects}], got {num_objects}")
        stored = (self._keys, self._key_sq_norm, self._values, self._valid)
        for tensor in (*stored, self._permanent, self._usage, self._reads, self._written_at):
            tensor.zero_()
        self._num_objects = num_objects
        self._size = self._num_permanent = self._num_writes = 0
        self._has_temporary = False

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
        """Store one frame; the first frame of a stream is always permanent.

        Args:
            key: (1, Ck, h, w). value: (K, Cv, h, w), K = ``num_objects``.
        Returns:
            The slot written, a 0-d int64 tensor on the bank's device (the victim of an
            eviction is chosen there, without a host sync). It is a view overwritten by
            the next ``add``: ``int()`` it (a sync) to keep it.
        """
        self._check(key, "key", (1, self._key_dim, self._height, self._width))
        self._check(value, "value", (self._num_objects, self._value_dim, self._height, self._width))
        permanent = permanent or self._size == 0
        index = self._slot_index
        if self._size < self.capacity:
            slot = self._size
            index.fill_(slot)
            self._valid[slot].fill_(True)
            self._size += 1
        elif self._num_permanent >= self.capacity:
            raise RuntimeError(f"all {self.capacity} memory slots are permanent: nothing can be replaced")
        else:
            self._choose_victim()  # writes index
        self._write(index, key, value)
        self._permanent.index_fill_(0, index, permanent)
        self._usage.index_fill_(0, index, 0.0)
        self._reads.index_fill_(0, index, 0.0)
        self._written_at.index_fill_(0, index, self._num_writes)
        self._num_writes += 1
        self._num_permanent += int(permanent)
        return index[0]

    def set_temporary(self, key: torch.Tensor, value: torch.Tensor) -> None:
        """Write the last frame into the temporary slot (overwritten at every call).

        Shapes as :meth:`add`. Needs ``MemoryConfig(temporary_slot=True)``.
        """
        if not self.config.temporary_slot:
            raise RuntimeError("this bank has no temporary slot: build it with MemoryConfig(temporary_slot=True)")
        self._check(key, "key", (1, self._key_dim, self._height, self._width))
        self._check(value, "value", (self._num_objects, self._value_dim, self._height, self._width))
        self._write(self._temporary_index, key, value)
        if not self._has_temporary:
            self._valid[self.capacity].fill_(True)
            self._has_temporary = True

    def clear_temporary(self) -> None:
        """Stop reading the temporary slot until the next :meth:`set_temporary`."""
        if self._has_temporary:
            self._valid[self.capacity].fill_(False)
            self._has_temporary = False

    # ------------------------------------------------------------------ reading
    def read(self, query_key: torch.Tensor) -> torch.Tensor:
        """Top-k readout of the query frame and, in usage mode, usage bookkeeping.

        Args:
            query_key: (1, Ck, h, w).
        Returns:
            (K, Cv, h, w), a view of a bank buffer overwritten by the next read.
        """
        if self._size == 0 and not self._has_temporary:
            raise RuntimeError("memory is empty: add the first frame before reading")
        self._check(query_key, "query_key", (1, self._key_dim, self._height, self._width))
        k, hw = self._num_objects, self._height * self._width
        slots = self._keys.shape[1]
        readout, position_weight = topk_readout(
            self._keys.view(self._key_dim, slots * hw),
            self._values[:k].view(k, self._value_dim, slots * hw),
            query_key.reshape(self._key_dim, hw),
            self._valid.view(slots * hw),
            self.config.top_k,
            key_sq_norm=self._key_sq_norm.view(slots * hw),
            buffers=self._work,
            out=self._readout[:k],
        )
        if self.config.eviction == "usage":
            torch.sum(position_weight.view(slots, hw), dim=1, dtype=torch.float32, out=self._slot_mass)
            self._usage.add_(self._slot_mass[: self.capacity])
            self._reads.add_(1.0)  # slots not yet valid are reset when written
        return readout.view(k, self._value_dim, self._height, self._width)

    # ------------------------------------------------------------------ internals
    def _write(self, index: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> None:
        hw = self._height * self._width
        key_flat = key.reshape(self._key_dim, hw)
        self._keys.index_copy_(1, index, key_flat.unsqueeze(1))
        torch.mul(key_flat, key_flat, out=self._key_product)
        torch.sum(self._key_product, dim=0, keepdim=True, out=self._new_sq_norm)
        self._key_sq_norm.index_copy_(0, index, self._new_sq_norm)
        k = self._num_objects
        self._values[:k].index_copy_(2, index, value.reshape(k, self._value_dim, 1, hw))

    def _choose_victim(self) -> None:
        """Write the slot to replace into ``_slot_index``, on the device.

        Usage is the readout weight mass a slot received, divided by the number of reads
        since it was written: the mean weight per read. Raw totals grow with age, so they
        would always evict the newest frames; the mean compares old and new slots fairly.
        A slot not read yet has no evidence, so it is protected, unless every replaceable
        slot is unread; then the oldest goes (which is also the ``oldest`` policy).
        """
        torch.where(self._permanent, self._never, self._written_at, out=self._age)
        if self.config.eviction == "oldest":
            torch.argmin(self._age, dim=0, keepdim=True, out=self._slot_index)
            return
        torch.argmin(self._age, dim=0, keepdim=True, out=self._oldest)
        torch.clamp(self._reads, min=1.0, out=self._score)
        torch.div(self._usage, self._score, out=self._score)
        torch.eq(self._reads, 0.0, out=self._protected)
        self._protected.logical_or_(self._permanent)
        self._score.masked_fill_(self._protected, math.inf)
        # The oldest replaceable slot scores at most float max, so argmin never lands on
        # an +inf (permanent) slot even when every replaceable slot is unread.
        self._score.scatter_reduce_(0, self._oldest, self._last_resort, reduce="amin")
        torch.argmin(self._score, dim=0, keepdim=True, out=self._slot_index)

    def _check(self, tensor: torch.Tensor, name: str, shape: tuple[int, ...]) -> None:
        if tuple(tensor.shape) != shape:
            raise ValueError(f"{name} must have shape {shape}, got {tuple(tensor.shape)}")
        if tensor.dtype != self.dtype or tensor.device != self._device:
            raise ValueError(f"{name} must be {self.dtype} on {self._device}, got {tensor.dtype} on {tensor.device}")

    def _tensors(self) -> tuple[torch.Tensor, ...]:
        """Every tensor the bank owns besides the readout work buffers (for nbytes and tests)."""
        return (
            self._keys, self._key_sq_norm, self._values, self._valid, self._readout, self._key_product,
            self._new_sq_norm, self._permanent, self._usage, self._reads, self._written_at, self._slot_mass,
            self._score, self._protected, self._age, self._oldest, self._never, self._last_resort,
            self._slot_index, self._temporary_index,
        )  # fmt: skip

"""Dispatch-level guards for the steady step: no host reads of tensors, no new tensors.

:func:`forbid_host_reads` fails on anything that reads a tensor's value back to the host
(on CUDA each is a sync): ``.item()``, ``bool()``/``int()``/``float()`` of a tensor,
``.tolist()``, ``.cpu()``, ``.numpy()``, ``.to("cpu")`` of a device tensor, and ops whose
output shape depends on values (``nonzero``, ``unique``, ``masked_select``...).

:class:`AllocationCounter` records every aten op that returns a tensor it did not write
into: an op whose schema return carries no alias annotation (not ``out=``, not in-place,
not a view) creates a new tensor. ``paused()`` excludes a region (an engine's insides).

:func:`nested_host_reads` sees what the two modes above cannot: a host read made *inside*
an aten kernel (``masked_fill_`` with a 0-d tensor value calls ``.item()`` in C++). A
dispatch mode sees only the outermost op; the profiler's op observers see every op the
dispatcher runs, nested or not.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode


class HostReadError(AssertionError):
    pass


_READ_METHODS = {
    torch.Tensor.item: "item()",
    torch.Tensor.tolist: "tolist()",
    torch.Tensor.cpu: "cpu()",
    torch.Tensor.numpy: "numpy()",
    torch.Tensor.__bool__: "bool()",
    torch.Tensor.__int__: "int()",
    torch.Tensor.__float__: "float()",
    torch.Tensor.__index__: "index()",
    torch.Tensor.__array__: "numpy array",
}
_DATA_DEPENDENT = {"nonzero", "unique", "_unique", "_unique2", "unique_consecutive", "unique_dim", "masked_select", "nonzero_static", "argwhere"}
# Ops that return a Python value without looking at tensor data.
_METADATA = {"is_same_size", "sym_size", "sym_stride", "sym_numel", "sym_storage_offset", "dim", "is_nonzero_metadata"}


class _ForbidFunctions(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        name = _READ_METHODS.get(func)
        if name is not None:
            raise HostReadError(f"{name} of a tensor inside the steady step")
        if func is torch.Tensor.to and args and isinstance(args[0], torch.Tensor) and args[0].device.type != "cpu":
            target = kwargs.get("device", args[1] if len(args) > 1 else None)
            if target is not None and not isinstance(target, torch.dtype) and torch.device(target).type == "cpu":
                raise HostReadError("to(cpu) of a device tensor inside the steady step")
        return func(*args, **kwargs)


class _ForbidDispatch(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        name = func.overloadpacket.__name__
        if name in _DATA_DEPENDENT:
            raise HostReadError(f"aten::{name} (output shape depends on values) inside the steady step")
        returns = func._schema.returns
        if name not in _METADATA and returns and not any(_is_tensor_type(r.type) for r in returns):
            raise HostReadError(f"aten::{name} returns a host value inside the steady step")
        return func(*args, **(kwargs or {}))


def _is_tensor_type(kind: torch._C.JitType) -> bool:
    text = str(kind)
    return "Tensor" in text


@contextmanager
def forbid_host_reads() -> Iterator[None]:
    with _ForbidFunctions(), _ForbidDispatch():
        yield


#: Ops that copy a tensor's value to the host (on CUDA, a sync each).
HOST_READ_OPS = ("aten::item", "aten::_local_scalar_dense", "aten::is_nonzero", "aten::equal")


class NestedHostReads:
    """``with NestedHostReads() as reads:`` ... then ``reads.names``: host-read ops run
    inside the block at any depth (profiler op events; CPU only, a few ms per frame)."""

    def __enter__(self) -> NestedHostReads:
        self._profile = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
        self._profile.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._profile.__exit__(*exc)
        self.names = [event.name for event in self._profile.events() if event.name in HOST_READ_OPS]


class AllocationCounter(TorchDispatchMode):
    """Counts aten ops that return a new tensor (``.counts``: op name -> calls)."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()
        self.seen = 0  # ops dispatched outside paused regions (proves the mode was active)
        self._paused = 0

    @contextmanager
    def paused(self) -> Iterator[None]:
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        if not self._paused:
            self.seen += 1
            for ret in func._schema.returns:
                if _is_tensor_type(ret.type) and ret.alias_info is None:
                    self.counts[str(func)] += 1
                    break
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.counts.values())

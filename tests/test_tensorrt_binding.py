"""TensorRT engines bind once per K: shapes and addresses set when bound, a steady run is
one enqueue (a fake TensorRT context on the CPU; the real one needs TensorRT and a GPU)."""

from __future__ import annotations

from contextlib import nullcontext
from types import SimpleNamespace

import pytest
import torch

from eamstcn.runtime.engines.base import Engine, TensorSpec
from eamstcn.runtime.engines.binding import bind
from eamstcn.runtime.engines.tensorrt_engine import TensorRTBinding, TensorRTEngine


class FakeContext:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        self.calls.append(("shape", name, shape))
        return True

    def set_tensor_address(self, name: str, address: int) -> None:
        self.calls.append(("address", name, address))

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return self.shapes[name]

    def execute_async_v3(self, stream: int) -> bool:
        self.calls.append(("enqueue",))
        return True


class FakePlan:
    def __init__(self) -> None:
        self.context = FakeContext()

    def create_execution_context(self) -> FakeContext:
        return self.context

    def get_tensor_profile_shape(self, name: str, profile: int) -> tuple:
        return (1, 2, 2), (2, 2, 2), (4, 2, 2)


@pytest.fixture
def engine(monkeypatch: pytest.MonkeyPatch) -> TensorRTEngine:
    monkeypatch.setattr(torch.cuda, "device", lambda device: nullcontext())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: SimpleNamespace(cuda_stream=0))
    inputs = (TensorSpec("readout", ("K", 2, 2)), TensorSpec("f16x", (1, 2, 2)))
    outputs = (TensorSpec("logits", ("K", 1, 2)),)
    plan = FakePlan()
    engine = TensorRTEngine("decoder", plan, torch.device("cpu"), inputs, outputs)
    plan.context.shapes = {}
    return engine


def _bound(engine: TensorRTEngine, objects: int) -> TensorRTBinding:
    engine._context.shapes = {"logits": (objects, 1, 2)}  # noqa: SLF001
    return bind(engine, {"readout": torch.zeros(objects, 2, 2), "f16x": torch.zeros(1, 2, 2)}, objects)


def test_tensorrt_binds_addresses_once_per_object_count(engine: TensorRTEngine) -> None:
    assert isinstance(engine, Engine) and engine.capturable
    calls = engine._context.calls  # noqa: SLF001
    one = _bound(engine, 1)
    assert isinstance(one, TensorRTBinding) and one.capturable
    bound_calls = len(calls)
    assert bound_calls == 2 + 2 + 1  # two shapes, two input addresses, one output address
    for _ in range(5):
        one.run()
    assert calls[bound_calls:] == [("enqueue",)] * 5  # steady runs: no host-side setup
    two = _bound(engine, 2)
    assert two.outputs["logits"].shape == (2, 1, 2)
    assert one.outputs["logits"].data_ptr() != two.outputs["logits"].data_ptr()
    del calls[:]
    one.run()  # another K ran in between: its addresses are set again, once
    one.run()
    assert [c[0] for c in calls] == ["shape", "address", "shape", "address", "address", "enqueue", "enqueue"]
    assert ("address", "logits", one.outputs["logits"].data_ptr()) in calls

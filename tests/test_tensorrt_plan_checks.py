"""TensorRT plans are checked against the manifest when opened (tensor names, modes,
dtypes, shapes). The check is a pure function over the engine's ``get_tensor_*`` calls,
tested here with a stand-in engine; the real backend's tests skip without tensorrt."""

from __future__ import annotations

from enum import Enum

import pytest
import torch

from eamstcn.runtime.engines.base import EngineError, TensorSpec
from eamstcn.runtime.engines.tensorrt_engine import check_plan


class DataType(Enum):  # the names TensorRT's enums use
    FLOAT = 0
    HALF = 1


class Mode(Enum):
    INPUT = 0
    OUTPUT = 1


class FakePlan:
    def __init__(self, tensors: dict[str, tuple[Mode, DataType, tuple[int, ...]]]) -> None:
        self.tensors = tensors
        self.num_io_tensors = len(tensors)

    def get_tensor_name(self, index: int) -> str:
        return list(self.tensors)[index]

    def get_tensor_mode(self, name: str) -> Mode:
        return self.tensors[name][0]

    def get_tensor_dtype(self, name: str) -> DataType:
        return self.tensors[name][1]

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return self.tensors[name][2]


INPUTS = (TensorSpec("readout", ("K", 8, 4, 4), torch.float16), TensorSpec("f16x", (1, 8, 4, 4), torch.float16))
OUTPUTS = (TensorSpec("logits", ("K", 1, 64, 64), torch.float16),)


def plan(**changes: tuple[Mode, DataType, tuple[int, ...]]) -> FakePlan:
    tensors = {
        "readout": (Mode.INPUT, DataType.HALF, (-1, 8, 4, 4)),
        "f16x": (Mode.INPUT, DataType.HALF, (1, 8, 4, 4)),
        "logits": (Mode.OUTPUT, DataType.HALF, (-1, 1, 64, 64)),
    }
    tensors.update(changes)
    return FakePlan(tensors)


def test_a_matching_plan_passes() -> None:
    check_plan(plan(), INPUTS, OUTPUTS, "decoder.fp16.plan")


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"logits": (Mode.OUTPUT, DataType.FLOAT, (-1, 1, 64, 64))}, "logits is FLOAT in the plan"),
        ({"logits": (Mode.OUTPUT, DataType.HALF, (-1, 1, 32, 32))}, "logits has shape [-1, 1, 32, 32]"),
        ({"f16x": (Mode.INPUT, DataType.HALF, (1, 8, 4))}, "f16x has shape"),
        ({"f16x": (Mode.OUTPUT, DataType.HALF, (1, 8, 4, 4))}, "f16x is an output of the plan"),
        ({"extra": (Mode.OUTPUT, DataType.HALF, (1,))}, "has tensors"),
    ],
)
def test_mismatches_are_one_line_errors(changes: dict, message: str) -> None:
    with pytest.raises(EngineError) as info:
        check_plan(plan(**changes), INPUTS, OUTPUTS, "decoder.fp16.plan")
    assert message in str(info.value) and "\n" not in str(info.value)


def test_fp32_manifest_against_an_fp16_plan_is_refused() -> None:
    as_fp32 = tuple(TensorSpec(s.name, s.shape, torch.float32) for s in INPUTS)
    with pytest.raises(EngineError, match="readout is HALF in the plan"):
        check_plan(plan(), as_fp32, OUTPUTS, "decoder.fp16.plan")


def test_broken_tensorrt_install_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """``import tensorrt`` that fails to load its libraries (OSError) is reported, not raised."""
    import builtins

    from eamstcn.runtime.engines import tensorrt_engine

    real_import = builtins.__import__

    def broken(name, *args, **kwargs):
        if name == "tensorrt":
            raise OSError("libnvinfer.so.10: cannot open shared object file\nmore detail")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", broken)
    assert tensorrt_engine.tensorrt_available() is False
    with pytest.raises(EngineError) as info:
        tensorrt_engine.import_tensorrt()
    assert "libnvinfer.so.10" in str(info.value) and "\n" not in str(info.value)

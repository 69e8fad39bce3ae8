"""Opening a bundle's TensorRT plans: the backend deserialises each plan, checks it and
hands the three to ``assemble_engine_set`` like the other backends. A fake ``tensorrt``
module on the CPU; the real one needs TensorRT and a GPU (tests/test_engines.py)."""

from __future__ import annotations

import sys
from contextlib import nullcontext
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from eamstcn import graph_spec
from eamstcn.config import TINY
from eamstcn.runtime.engines import tensorrt_engine
from eamstcn.runtime.engines.base import EngineError, TensorSpec
from eamstcn.runtime.engines.tensorrt_engine import TensorRTEngine, open_tensorrt_engines
from eamstcn.runtime.manifest import GraphEntry, GraphFile, Manifest

CUDA0 = torch.device("cuda", 0)  # never touched: torch.cuda.device is replaced below


def _shape(name: str) -> tuple[int | str, ...]:
    return ("K", 1, 2) if name in graph_spec.OBJECT_AXIS_TENSORS else (1, 1, 2)


class FakePlan:
    """An ICudaEngine as far as the backend asks: tensors from graph_spec, all HALF."""

    def __init__(self, graph: str) -> None:
        inputs, outputs = graph_spec.GRAPH_IO[graph]
        self.tensors = {name: "INPUT" for name in inputs} | {name: "OUTPUT" for name in outputs}
        self.num_io_tensors = len(self.tensors)

    def get_tensor_name(self, index: int) -> str:
        return list(self.tensors)[index]

    def get_tensor_mode(self, name: str) -> SimpleNamespace:
        return SimpleNamespace(name=self.tensors[name])

    def get_tensor_dtype(self, name: str) -> SimpleNamespace:
        return SimpleNamespace(name="HALF")

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return tuple(-1 if dim == "K" else dim for dim in _shape(name))

    def get_tensor_profile_shape(self, name: str, profile: int) -> tuple:
        return (1, 1, 2), (2, 1, 2), (4, 1, 2)

    def create_execution_context(self) -> object:
        return object()


class FakeRuntime:
    """Deserialises a plan file whose bytes are its graph's name; b"" is a plan TensorRT refuses."""

    def __init__(self, logger: object) -> None:
        pass

    def deserialize_cuda_engine(self, data: bytes) -> FakePlan | None:
        return FakePlan(data.decode()) if data else None


class FakeLogger:
    WARNING = 2

    def __init__(self, level: int) -> None:
        pass


@pytest.fixture
def fake_tensorrt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", SimpleNamespace(Logger=FakeLogger, Runtime=FakeRuntime))
    monkeypatch.setattr(torch.cuda, "device", lambda device: nullcontext())


def _manifest(tmp_path: Path, contents: dict[str, bytes], precision: str = "fp16") -> Manifest:
    graphs = {}
    for name in graph_spec.GRAPHS:
        inputs, outputs = graph_spec.GRAPH_IO[name]
        path = tmp_path / f"{name}.{precision}.plan"
        path.write_bytes(contents.get(name, name.encode()))
        graphs[name] = GraphEntry(
            name,
            tuple(TensorSpec(n, _shape(n)) for n in inputs),
            tuple(TensorSpec(n, _shape(n)) for n in outputs),
            (GraphFile(path, "tensorrt", precision, torch.float16, None, None),),
        )
    return Manifest(tmp_path, TINY, (32, 32), (32, 32), (0, 0, 0, 0), 4, graphs)


def test_opens_three_plans_as_one_engine_set(fake_tensorrt: None, tmp_path: Path) -> None:
    engines = open_tensorrt_engines(_manifest(tmp_path, {}), CUDA0, "fp16", "requested")
    assert (engines.backend, engines.precision, engines.dtype, engines.device) == ("tensorrt", "fp16", torch.float16, CUDA0)
    assert engines.reason == "requested" and engines.notes == ["object range (1, 4)"]
    for name in graph_spec.GRAPHS:
        engine = getattr(engines, name)
        assert isinstance(engine, TensorRTEngine) and engine.graph == name
        assert {spec.dtype for spec in (*engine.input_specs, *engine.output_specs)} == {torch.float16}


def test_a_plan_that_does_not_load_closes_the_ones_opened(fake_tensorrt: None, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    closed: list[str] = []
    close = TensorRTEngine.close
    monkeypatch.setattr(TensorRTEngine, "close", lambda self: (closed.append(self.graph), close(self)))
    with pytest.raises(EngineError, match="TensorRT cannot load .*decoder.fp16.plan"):
        open_tensorrt_engines(_manifest(tmp_path, {graph_spec.DECODER: b""}), CUDA0)
    assert closed == [graph_spec.KEY_ENCODER, graph_spec.VALUE_ENCODER]


def test_a_bundle_without_plans_of_the_precision_is_one_line(fake_tensorrt: None, tmp_path: Path) -> None:
    with pytest.raises(EngineError, match="the engine bundle has no fp16 TensorRT plans"):
        open_tensorrt_engines(_manifest(tmp_path, {}, precision="fp32"), CUDA0, "fp16")


def test_needs_cuda(fake_tensorrt: None, tmp_path: Path) -> None:
    with pytest.raises(EngineError, match="needs a CUDA device"):
        open_tensorrt_engines(_manifest(tmp_path, {}), torch.device("cpu"))
    assert tensorrt_engine.tensorrt_available()  # the fake imports

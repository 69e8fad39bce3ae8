"""TensorRT plan building: profile arithmetic everywhere, the build where tensorrt imports."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from eamstcn.export.tensorrt_build import optimal_objects, profile_shapes


def test_profile_shapes_cover_k_from_one_to_max() -> None:
    inputs = {"image": [1, 3, 480, 864], "masks": ["K", 1, 480, 864], "others": ["K", 1, 480, 864], "f16x": [1, 512, 30, 54]}
    shapes = profile_shapes(inputs, max_objects=4)
    assert set(shapes) == {"masks", "others"}  # fixed inputs need no profile entry
    assert shapes["masks"] == ((1, 1, 480, 864), (2, 1, 480, 864), (4, 1, 480, 864))


def test_profile_shapes_small_max_and_no_object_axis() -> None:
    assert optimal_objects(1) == 1
    assert profile_shapes({"readout": ["K", 512, 30, 54]}, max_objects=1) == {
        "readout": ((1, 512, 30, 54), (1, 512, 30, 54), (1, 512, 30, 54))
    }
    assert profile_shapes({"image": [1, 3, 64, 64]}, max_objects=4) == {}
    with pytest.raises(ValueError):
        profile_shapes({"masks": ["K", 1, 64, 64]}, max_objects=0)


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_build_decoder_plan(tmp_path: Path) -> None:
    trt = pytest.importorskip("tensorrt")
    if not torch.cuda.is_available():
        pytest.skip("TensorRT needs a CUDA device")
    from eamstcn.checkpoint import save_checkpoint
    from eamstcn.config import TINY
    from eamstcn.export.bundle import ExportConfig, export_bundle
    from eamstcn.network import EamStcn

    checkpoint = tmp_path / "tiny.pth"
    save_checkpoint(checkpoint, EamStcn(TINY))
    result = export_bundle(ExportConfig(checkpoint=checkpoint, out=tmp_path / "engines", frame_size=(64, 64), fp16=True, max_objects=3))
    plan = result.out / "decoder.fp16.plan"
    assert plan.is_file()
    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(plan.read_bytes())
    names = [engine.get_tensor_name(index) for index in range(engine.num_io_tensors)]
    assert names == ["readout", "f16x", "f8", "f4", "logits"]
    assert engine.get_tensor_dtype("logits") == trt.DataType.HALF
    minimum, _, maximum = engine.get_tensor_profile_shape("readout", 0)
    assert tuple(minimum)[0] == 1 and tuple(maximum)[0] == 3
    assert result.manifest["versions"]["tensorrt"] == trt.__version__

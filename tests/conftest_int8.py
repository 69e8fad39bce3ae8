"""A TINY engine bundle with INT8 graphs, shared by the INT8 tests (built once per run).

Import with ``from tests.conftest_int8 import int8_bundle  # noqa: F401`` (it pulls in
``runtime_assets`` for the checkpoint). Exporting takes about 30 s on two cores.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest_runtime import FRAME_SIZE, RuntimeAssets, runtime_assets  # noqa: F401

CALIBRATION_FRAMES = 8


def export_int8_bundle(checkpoint: Path, out: Path, **overrides: object):
    from eamstcn.export.bundle import ExportConfig, export_bundle

    settings = dict(
        checkpoint=checkpoint, out=out, frame_size=FRAME_SIZE, max_objects=4, simplify=False, trt=False,
        int8=True, calibration_frames=CALIBRATION_FRAMES,
        # An untrained network's masks drift under INT8; 0 keeps every graph in INT8, so
        # the tests run the quantized files (tests of the fp32 fallback set it high).
        int8_min_agreement=0.0,
        int8_min_speedup=0.0,  # a 64x56 TINY graph is too small for INT8 to be faster
    )
    settings.update(overrides)
    return export_bundle(ExportConfig(**settings))  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def int8_bundle(runtime_assets: RuntimeAssets, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    pytest.importorskip("onnxruntime.quantization")
    out = tmp_path_factory.getbasetemp() / "int8_assets" / "engines"
    if not (out / "manifest.json").is_file():
        export_int8_bundle(runtime_assets.checkpoint, out)
    return out

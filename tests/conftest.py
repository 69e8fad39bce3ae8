"""Fixtures shared across test modules: a TINY checkpoint and its exported bundles.

Each is built once per pytest run under the session's base temp folder, by whichever
test asks first: exporting takes ~10-30 s on two cores (INT8 about 30 s more). The
functions behind them, and the other helpers tests share, are in ``tests/helpers``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.assets import RuntimeAssets, build_runtime_assets, export_int8_bundle


@pytest.fixture(scope="session")
def runtime_assets(tmp_path_factory: pytest.TempPathFactory) -> RuntimeAssets:
    """A TINY checkpoint (sharpened to segment without training) and its fp32 ONNX bundle."""
    pytest.importorskip("onnx")
    pytest.importorskip("timm")
    return build_runtime_assets(tmp_path_factory.getbasetemp() / "runtime_assets")


@pytest.fixture(scope="session")
def int8_bundle(runtime_assets: RuntimeAssets, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same checkpoint exported with every graph in INT8 (the engines folder)."""
    pytest.importorskip("onnxruntime.quantization")
    out = tmp_path_factory.getbasetemp() / "int8_assets" / "engines"
    if not (out / "manifest.json").is_file():
        export_int8_bundle(runtime_assets.checkpoint, out)
    return out

"""Fixtures shared across test modules: a TINY checkpoint and its exported bundles.

Each is built once per pytest run under the session's base temp folder, by whichever
test asks first: exporting takes ~10-30 s on two cores (INT8 about 30 s more). The
functions behind them, and the other helpers tests share, are in ``tests/helpers``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

# The helpers assert too (assert_one_line_error, the fused-read comparisons): rewritten like
# test modules, their failures show the values compared. Must run before they are imported.
pytest.register_assert_rewrite("tests.helpers")

if TYPE_CHECKING:
    from tests.helpers.assets import RuntimeAssets


@pytest.fixture(scope="session")
def runtime_assets(tmp_path_factory: pytest.TempPathFactory) -> RuntimeAssets:
    """A TINY checkpoint (sharpened to segment without training) and its fp32 ONNX bundle."""
    from tests.helpers.assets import build_runtime_assets

    pytest.importorskip("onnx")
    pytest.importorskip("timm")
    return build_runtime_assets(tmp_path_factory.getbasetemp() / "runtime_assets")


@pytest.fixture(scope="session")
def int8_bundle(runtime_assets: RuntimeAssets, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same checkpoint exported with every graph in INT8 (the engines folder)."""
    from tests.helpers.assets import export_int8_bundle

    pytest.importorskip("onnxruntime.quantization")
    out = tmp_path_factory.getbasetemp() / "int8_assets" / "engines"
    if not (out / "manifest.json").is_file():
        export_int8_bundle(runtime_assets.checkpoint, out)
    return out

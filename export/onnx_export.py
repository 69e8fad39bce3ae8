"""PyTorch wrapper -> ONNX file, the ONNX checker, and the optional onnxslim pass."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import onnx
import torch
from torch import nn

from eamstcn.graph_spec import OBJECT_AXIS_TENSORS

#: The TorchScript exporter (the one we use) supports opsets MIN_OPSET..torch's maximum.
MIN_OPSET = 17
OBJECT_AXIS_NAME = "K"


def max_opset() -> int:
    """Highest opset the installed torch's TorchScript exporter writes."""
    from torch.onnx import _constants

    return int(getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", _constants.ONNX_MAX_OPSET))


def object_axes(names: Sequence[str]) -> dict[str, dict[int, str]]:
    """``dynamic_axes`` for torch.onnx.export: axis 0 is K for every object-axis tensor."""
    return {name: {0: OBJECT_AXIS_NAME} for name in names if name in OBJECT_AXIS_TENSORS}


def to_onnx(
    wrapper: nn.Module,
    example_inputs: Sequence[torch.Tensor],
    path: str | Path,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_axes: dict[str, dict[int, str]],
    opset: int,
) -> Path:
    """Trace ``wrapper`` on ``example_inputs`` and write an ONNX file.

    We use the TorchScript exporter (``dynamo=False``): the graphs are plain convolutions
    without data-dependent control flow, it needs no onnxscript, and it folds BatchNorm
    into the convolutions. Trace with K >= 2 so that no object axis is specialised to 1.
    """
    path = Path(path)
    with warnings.catch_warnings():
        # The legacy exporter announces its deprecation on every call; nothing to act on.
        warnings.simplefilter("ignore")
        with torch.no_grad():
            torch.onnx.export(
                wrapper.eval(),
                tuple(example_inputs),
                str(path),
                input_names=list(input_names),
                output_names=list(output_names),
                dynamic_axes=dynamic_axes,
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
    return path


def check(path: str | Path) -> None:
    """Run the ONNX checker with full shape/type inference; raises on an invalid graph."""
    onnx.checker.check_model(str(path), full_check=True)


def simplify(source: str | Path, destination: str | Path) -> bool:
    """Write an onnxslim-simplified copy of ``source``; False if onnxslim fails or gains nothing.

    Whether the copy is kept is the caller's decision, after a parity check on it.
    """
    try:
        import onnxslim
    except ImportError:
        return False
    original = onnx.load(str(source))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            slim = onnxslim.slim(original)
    except Exception:  # onnxslim is an optimisation: any failure means "keep the original"
        return False
    if slim is None or len(slim.graph.node) >= len(original.graph.node):
        return False
    onnx.save(slim, str(destination))
    return True

"""What an exported ONNX file holds: the dtypes of its weights."""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto

from eamstcn.export.fp16 import float32_only_tensors


def fp32_weights(path: str | Path) -> list[str]:
    """Names of float32 initialisers in an fp16 file other than those ONNX requires in fp32.

    Empty for a correct conversion: an fp16 file holds fp16 weights (the ``Resize``
    scales, which onnxslim turns into initialisers, are allowed).
    """
    graph = onnx.load(str(path)).graph
    keep32 = float32_only_tensors(graph)
    return [item.name for item in graph.initializer if item.data_type == TensorProto.FLOAT and item.name not in keep32]


def fp16_weight_count(path: str | Path) -> int:
    """Number of float16 initialisers in an ONNX file."""
    return sum(item.data_type == TensorProto.FLOAT16 for item in onnx.load(str(path)).graph.initializer)

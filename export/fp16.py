"""FP16 copies of the fp32 ONNX graphs, for GPU execution providers and TensorRT.

Inputs, outputs and weights all become float16: the runtime feeds float16 tensors on the
GPU, and a plan built from a float16 graph keeps float16 I/O. We convert the exported fp32
graph instead of tracing ``model.half()`` because PyTorch's CPU half convolution is about
100x slower than fp32, which makes tracing the full-size model impractical.

The conversion is a plain graph rewrite with ``onnx`` only (no onnxconverter-common):
float32 initialisers, ``Constant`` tensors, ``Cast`` targets and graph I/O types become
float16, except the tensors that ONNX requires to stay float32 (``Resize`` roi/scales).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

#: op type -> input positions that the ONNX spec types as float32 regardless of the data.
_FLOAT32_ONLY_INPUTS: dict[str, tuple[int, ...]] = {"Resize": (1, 2)}

FP16_MAX = float(np.finfo(np.float16).max)


def float32_only_tensors(graph: onnx.GraphProto) -> set[str]:
    """Names of tensors that must stay float32 (feed a float32-only input slot)."""
    keep: set[str] = set()
    for node in graph.node:
        for index in _FLOAT32_ONLY_INPUTS.get(node.op_type, ()):
            if index < len(node.input) and node.input[index]:
                keep.add(node.input[index])
    return keep


def _to_float16_tensor(tensor: TensorProto) -> tuple[TensorProto, int]:
    """float32 TensorProto -> float16 TensorProto; also returns how many values were clipped.

    Folded BatchNorm scales can exceed the float16 range (65504) when a running variance
    is tiny; clipping keeps them finite instead of turning a whole channel into inf/NaN.
    """
    values = numpy_helper.to_array(tensor)
    clipped = int(np.count_nonzero(np.abs(values) > FP16_MAX))
    half = np.clip(values, -FP16_MAX, FP16_MAX).astype(np.float16)
    return numpy_helper.from_array(half, tensor.name), clipped


def convert_to_fp16(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """A float16 copy of ``model`` (graph I/O, weights, constants and casts).

    Returns the converted model and the number of weight values clipped to +-65504.
    Only the main graph is rewritten: our graphs have no subgraphs (If/Loop).
    """
    converted = onnx.ModelProto()
    converted.CopyFrom(model)
    graph = converted.graph
    keep32 = float32_only_tensors(graph)
    clipped = 0

    for index, initializer in enumerate(graph.initializer):
        if initializer.data_type == TensorProto.FLOAT and initializer.name not in keep32:
            half, count = _to_float16_tensor(initializer)
            graph.initializer[index].CopyFrom(half)
            clipped += count

    for node in graph.node:
        if node.op_type == "Constant" and not set(node.output) & keep32:
            for attribute in node.attribute:
                if attribute.name == "value" and attribute.t.data_type == TensorProto.FLOAT:
                    half, count = _to_float16_tensor(attribute.t)
                    attribute.t.CopyFrom(half)
                    clipped += count
        elif node.op_type == "Cast" and not set(node.output) & keep32:
            for attribute in node.attribute:
                if attribute.name == "to" and attribute.i == TensorProto.FLOAT:
                    attribute.i = TensorProto.FLOAT16
        elif node.op_type == "ConstantOfShape":
            for attribute in node.attribute:
                if attribute.name == "value" and attribute.t.data_type == TensorProto.FLOAT:
                    attribute.t.CopyFrom(_to_float16_tensor(attribute.t)[0])

    for value in list(graph.input) + list(graph.output):
        if value.type.tensor_type.elem_type == TensorProto.FLOAT:
            value.type.tensor_type.elem_type = TensorProto.FLOAT16
    # Intermediate types recorded by the fp32 export are now wrong; let inference redo them.
    del graph.value_info[:]
    return onnx.shape_inference.infer_shapes(converted, strict_mode=True), clipped


def write_fp16(source: str | Path, destination: str | Path) -> int:
    """Convert the fp32 ONNX file ``source`` into ``destination``; returns clipped weight count."""
    model, clipped = convert_to_fp16(onnx.load(str(source)))
    onnx.save(model, str(destination))
    return clipped

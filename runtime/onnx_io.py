"""The inputs and outputs an ONNX file declares, read without the ``onnx`` package.

The runtime must open a bundle with only onnxruntime installed, and it checks the
manifest against the graphs before any backend loads them (a manifest whose shapes were
edited would otherwise be believed by the torch and TensorRT paths). Building an
onnxruntime session per file just to read six signatures costs seconds; this walks the
protobuf wire format of ``ModelProto.graph`` over a memory map instead and skips every
node and weight by its length, so it touches a few kilobytes of a file of any size.

Field numbers are those of ``onnx.proto`` (stable since IR version 3).
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# ModelProto.graph; GraphProto.initializer / input / output; TensorProto.name;
# ValueInfoProto.name / type; TypeProto.tensor_type; Tensor.elem_type / shape;
# TensorShapeProto.dim; Dimension.dim_value / dim_param.
_MODEL_GRAPH = 7
_GRAPH_INITIALIZER, _GRAPH_INPUT, _GRAPH_OUTPUT = 5, 11, 12
_TENSOR_NAME = 8
_VALUE_NAME, _VALUE_TYPE = 1, 2
_TYPE_TENSOR = 1
_TENSOR_ELEM_TYPE, _TENSOR_SHAPE = 1, 2
_SHAPE_DIM = 1
_DIM_VALUE, _DIM_PARAM = 1, 2

#: TensorProto.DataType -> the dtype names manifests use.
ELEM_TYPES = {1: "float32", 10: "float16", 11: "float64", 6: "int32", 7: "int64", 9: "bool", 2: "uint8", 3: "int8"}


class OnnxReadError(ValueError):
    """The file is not an ONNX model this reader understands (truncated, not protobuf)."""


@dataclass(frozen=True)
class ValueSignature:
    """One graph input or output: name, dtype name ("float32", "float16", or
    "elem_type N" for others) and shape: ints for fixed sizes, strings for symbolic
    (dynamic) axes, None for an axis with neither."""

    name: str
    dtype: str
    shape: tuple[int | str | None, ...]


@dataclass(frozen=True)
class GraphSignature:
    inputs: tuple[ValueSignature, ...]
    outputs: tuple[ValueSignature, ...]


def _varint(buffer: mmap.mmap | bytes, offset: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if offset >= end:
            raise OnnxReadError("truncated varint")
        byte = buffer[offset]
        offset += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, offset
        shift += 7
        if shift > 63:
            raise OnnxReadError("varint too long")


def _fields(buffer: mmap.mmap | bytes, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(field number, wire type, value or payload start, payload end) of one message."""
    offset = start
    while offset < end:
        key, offset = _varint(buffer, offset, end)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, offset = _varint(buffer, offset, end)
            yield number, wire, value, offset
        elif wire == 2:
            length, offset = _varint(buffer, offset, end)
            if offset + length > end:
                raise OnnxReadError("field runs past the end of its message")
            yield number, wire, offset, offset + length
            offset += length
        elif wire == 1:
            offset += 8
        elif wire == 5:
            offset += 4
        else:
            raise OnnxReadError(f"unsupported wire type {wire}")
        if offset > end:
            raise OnnxReadError("field runs past the end of its message")


def _string(buffer: mmap.mmap | bytes, start: int, end: int) -> str:
    return bytes(buffer[start:end]).decode("utf-8", errors="replace")


def _value_info(buffer: mmap.mmap | bytes, start: int, end: int) -> ValueSignature:
    name, elem_type, shape = "", 0, []
    for number, wire, a, b in _fields(buffer, start, end):
        if number == _VALUE_NAME and wire == 2:
            name = _string(buffer, a, b)
        elif number == _VALUE_TYPE and wire == 2:
            for t_number, t_wire, ta, tb in _fields(buffer, a, b):
                if t_number != _TYPE_TENSOR or t_wire != 2:
                    continue
                for f_number, f_wire, fa, fb in _fields(buffer, ta, tb):
                    if f_number == _TENSOR_ELEM_TYPE and f_wire == 0:
                        elem_type = fa
                    elif f_number == _TENSOR_SHAPE and f_wire == 2:
                        for d_number, d_wire, da, db in _fields(buffer, fa, fb):
                            if d_number != _SHAPE_DIM or d_wire != 2:
                                continue
                            dim: int | str | None = None
                            for x_number, x_wire, xa, xb in _fields(buffer, da, db):
                                if x_number == _DIM_VALUE and x_wire == 0:
                                    dim = xa
                                elif x_number == _DIM_PARAM and x_wire == 2:
                                    dim = _string(buffer, xa, xb)
                            shape.append(dim)
    return ValueSignature(name, ELEM_TYPES.get(elem_type, f"elem_type {elem_type}"), tuple(shape))


def _tensor_name(buffer: mmap.mmap | bytes, start: int, end: int) -> str:
    for number, wire, a, b in _fields(buffer, start, end):
        if number == _TENSOR_NAME and wire == 2:
            return _string(buffer, a, b)
    return ""


def read_signature(path: str | Path) -> GraphSignature:
    """The graph inputs (initialisers excluded) and outputs declared by an ONNX file.

    Raises :class:`OnnxReadError` for a file that is not a readable ONNX model and
    ``OSError`` when it cannot be opened.
    """
    with open(path, "rb") as stream:
        size = stream.seek(0, 2)
        if size == 0:
            raise OnnxReadError("empty file")
        with mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ) as buffer:
            graph = None
            for number, wire, a, b in _fields(buffer, 0, size):
                if number == _MODEL_GRAPH and wire == 2:
                    graph = (a, b)
            if graph is None:
                raise OnnxReadError("no graph in the file")
            inputs: list[ValueSignature] = []
            outputs: list[ValueSignature] = []
            initializers: set[str] = set()
            for number, wire, a, b in _fields(buffer, *graph):
                if wire != 2:
                    continue
                if number == _GRAPH_INPUT:
                    inputs.append(_value_info(buffer, a, b))
                elif number == _GRAPH_OUTPUT:
                    outputs.append(_value_info(buffer, a, b))
                elif number == _GRAPH_INITIALIZER:
                    initializers.add(_tensor_name(buffer, a, b))
    # Old exporters list weights among the inputs; they are not the graph's interface.
    return GraphSignature(tuple(v for v in inputs if v.name not in initializers), tuple(outputs))

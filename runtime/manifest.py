"""Read and check an engine bundle's ``manifest.json`` (schema in docs/ARCHITECTURE.md).

The runtime trusts only the manifest and checks it against the files beside it. Every
problem is a :class:`ManifestError` with one line that says what is wrong and how to fix
it. File integrity: sizes are always checked; full sha256 hashes only with
``verify="sha256"`` (hashing hundreds of MB at every start is slow on an edge device, and
a size check already catches the usual truncated or half-copied bundle). Each ONNX file's
own inputs and outputs (names, shapes with their dynamic axes, dtypes) must be the ones
the manifest lists: the session sizes every buffer from the manifest, so an edited or
mismatched manifest is refused here rather than failing (or silently misreading) later.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from eamstcn import graph_spec
from eamstcn.config import ModelConfig
from eamstcn.fileio import file_sha256
from eamstcn.manifest_spec import FORMAT_TAG, FORMAT_VERSION, MANIFEST_NAME, PRECISION_DTYPES
from eamstcn.ops import pad_amounts
from eamstcn.runtime.engines.base import TensorSpec
from eamstcn.runtime.onnx_io import OnnxReadError, ValueSignature, read_signature

EXPORT_HINT = "eamstcn-export --checkpoint best.pth --fp16"

_DTYPES = {"float32": torch.float32, "float16": torch.float16}


class ManifestError(ValueError):
    """An engine bundle that cannot be used; the message is one line meant for the user."""


@dataclass(frozen=True)
class GraphFile:
    """One file of a graph: ``format`` "onnx" or "tensorrt", ``precision`` "fp32"/"fp16"."""

    path: Path
    format: str
    precision: str
    dtype: torch.dtype
    bytes: int | None
    sha256: str | None


@dataclass(frozen=True)
class GraphEntry:
    """A graph's inputs and outputs (shapes hold "K" for the object axis) and its files."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    files: tuple[GraphFile, ...] = ()

    def file(self, format: str, precision: str) -> GraphFile | None:
        for entry in self.files:
            if entry.format == format and entry.precision == precision:
                return entry
        return None

    def with_dtype(self, dtype: torch.dtype) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
        """(inputs, outputs) with every spec's dtype set to ``dtype`` (one dtype per file)."""
        retype = lambda specs: tuple(TensorSpec(s.name, s.shape, dtype) for s in specs)  # noqa: E731
        return retype(self.inputs), retype(self.outputs)


@dataclass(frozen=True)
class Manifest:
    """What the session needs from a bundle.

    ``frame_size`` (H, W) is the size frames are resized to before padding; None means
    "each frame at its own size" (the torch backend run from a checkpoint without a bundle).
    ``pads`` are (left, right, top, bottom) as :func:`eamstcn.ops.pad_amounts` gives them.
    """

    root: Path | None
    model_config: ModelConfig
    frame_size: tuple[int, int] | None
    padded_size: tuple[int, int] | None
    pads: tuple[int, int, int, int] | None
    max_objects: int | None
    graphs: dict[str, GraphEntry]
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    def precisions(self, format: str) -> set[str]:
        """Precisions for which every graph has a file of ``format``."""
        found = [{f.precision for f in self.graphs[name].files if f.format == format} for name in graph_spec.GRAPHS]
        return set.intersection(*found) if found else set()


def load_manifest(engines_dir: str | Path, verify: Literal["size", "sha256"] = "size") -> Manifest:
    """Read ``engines_dir/manifest.json``, check it and its files; raise :class:`ManifestError`."""
    root = Path(engines_dir)
    if not root.is_dir():
        raise ManifestError(f"no engines folder at {root}: build one with `{EXPORT_HINT}`")
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(f"{root} has no {MANIFEST_NAME}: rebuild the bundle with `{EXPORT_HINT}`")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ManifestError(f"{path} is not valid JSON (line {error.lineno}: {error.msg}); re-export with `{EXPORT_HINT}`") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ManifestError(f"cannot read {path}: {error}") from None
    if not isinstance(data, dict):
        raise ManifestError(f"{path} is not an engine manifest (a JSON object is expected)")
    manifest = parse_manifest(data, root, source=str(path))
    for entry in manifest.graphs.values():
        for graph_file in entry.files:
            check_file(graph_file, verify)
            if graph_file.format == "onnx":
                check_onnx_signature(entry, graph_file)
    return manifest


def parse_manifest(data: dict[str, Any], root: Path | None, source: str = MANIFEST_NAME) -> Manifest:
    """Validate the manifest's content (not its files) against :mod:`eamstcn.graph_spec`."""
    if data.get("format") != FORMAT_TAG:
        raise ManifestError(f"{source} is not an EamStcn engine manifest (format {data.get('format')!r}, expected {FORMAT_TAG!r})")
    if data.get("version") != FORMAT_VERSION:
        raise ManifestError(
            f"{source} has manifest version {data.get('version')!r}; this runtime reads version {FORMAT_VERSION}: "
            f"re-export with `{EXPORT_HINT}`"
        )
    try:
        model_config = ModelConfig.from_dict(dict(data["model_config"]), legacy=True)
        frame_size = _pair(data["frame_size"])
        padded_size = _pair(data["padded_size"])
        pads = tuple(int(v) for v in data["pads"])
        max_objects = int(data.get("max_objects") or 0) or None
        graphs_data = data["graphs"]
    except (KeyError, TypeError, ValueError) as error:
        raise ManifestError(f"{source} is missing or has an invalid field: {error}") from None
    if len(pads) != 4 or pads != pad_amounts(*frame_size):
        raise ManifestError(f"{source}: pads {list(pads)} do not match frame_size {list(frame_size)}")
    if padded_size != (frame_size[0] + pads[2] + pads[3], frame_size[1] + pads[0] + pads[1]):
        raise ManifestError(f"{source}: padded_size {list(padded_size)} is not frame_size plus pads")
    if not isinstance(graphs_data, dict) or set(graphs_data) != set(graph_spec.GRAPHS):
        found = sorted(graphs_data) if isinstance(graphs_data, dict) else graphs_data
        raise ManifestError(f"{source} lists graphs {found}; expected {list(graph_spec.GRAPHS)}")
    graphs = {name: _parse_graph(name, graphs_data[name], root, source) for name in graph_spec.GRAPHS}
    image = graphs[graph_spec.KEY_ENCODER].inputs[0]
    if image.shape != (1, 3, *padded_size):
        raise ManifestError(
            f"{source}: {graph_spec.KEY_ENCODER} image is {list(image.shape)} but padded_size is {list(padded_size)}: "
            f"the manifest was edited; re-export with `{EXPORT_HINT}`"
        )
    return Manifest(root, model_config, frame_size, padded_size, pads, max_objects, graphs, data)  # type: ignore[arg-type]


def _pair(value: Any) -> tuple[int, int]:
    height, width = (int(v) for v in value)
    if height <= 0 or width <= 0:
        raise ValueError(f"sizes must be positive, got {value}")
    return height, width


def _parse_graph(name: str, data: Any, root: Path | None, source: str) -> GraphEntry:
    expected_in, expected_out = graph_spec.GRAPH_IO[name]
    try:
        inputs = tuple(_parse_spec(item) for item in data["inputs"])
        outputs = tuple(_parse_spec(item) for item in data["outputs"])
        files = tuple(_parse_file(item, root) for item in data.get("files", []))
    except (KeyError, TypeError, ValueError) as error:
        raise ManifestError(f"{source}: graph {name} has an invalid entry: {error}") from None
    for kind, specs, expected in (("inputs", inputs, expected_in), ("outputs", outputs, expected_out)):
        names = tuple(spec.name for spec in specs)
        if names != expected:
            raise ManifestError(f"{source}: {name} {kind} are {list(names)}; this runtime expects {list(expected)}")
    if not any(f.format == "onnx" and f.precision == "fp32" for f in files):
        raise ManifestError(f"{source}: {name} lists no fp32 ONNX file; re-export with `{EXPORT_HINT}`")
    return GraphEntry(name, inputs, outputs, files)


def _parse_spec(item: dict[str, Any]) -> TensorSpec:
    shape = tuple(dim if dim == "K" else int(dim) for dim in item["shape"])
    return TensorSpec(str(item["name"]), shape)


def _parse_file(item: dict[str, Any], root: Path | None) -> GraphFile:
    relative = Path(str(item["path"]))
    if relative.is_absolute() or ".." in relative.parts:
        raise ValueError(f"file path {relative} must be relative to the bundle")
    dtype_name = str(item.get("dtype") or PRECISION_DTYPES.get(str(item.get("precision")), "float32"))
    if dtype_name not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype_name!r}")
    size = item.get("bytes")
    return GraphFile(
        path=(root / relative) if root is not None else relative,
        format=str(item["format"]),
        precision=str(item["precision"]),
        dtype=_DTYPES[dtype_name],
        bytes=None if size is None else int(size),
        sha256=item.get("sha256"),
    )


def check_file(graph_file: GraphFile, verify: Literal["size", "sha256"] = "size") -> None:
    """The file exists and has the manifest's size (and sha256 with ``verify="sha256"``)."""
    path = graph_file.path
    if not path.is_file():
        raise ManifestError(f"{path} is listed in {MANIFEST_NAME} but missing: re-export with `{EXPORT_HINT}`")
    size = path.stat().st_size
    if graph_file.bytes is not None and size != graph_file.bytes:
        raise ManifestError(
            f"{path} is {size} bytes but {MANIFEST_NAME} says {graph_file.bytes}: "
            f"the bundle is incomplete or was modified; re-export with `{EXPORT_HINT}`"
        )
    if verify == "sha256" and graph_file.sha256:
        if file_sha256(path) != graph_file.sha256:
            raise ManifestError(f"{path} does not match the sha256 in {MANIFEST_NAME}: re-export with `{EXPORT_HINT}`")


def _dims(shape: tuple[int | str | None, ...]) -> str:
    return "[" + ", ".join("?" if dim is None else str(dim) for dim in shape) + "]"


def _same_shape(listed: tuple[int | str, ...], found: tuple[int | str | None, ...]) -> bool:
    """Fixed sizes must be equal; the manifest's "K" must be a dynamic (named) axis in the
    file, whatever its name (onnxslim may rename it)."""
    if len(listed) != len(found):
        return False
    for want, have in zip(listed, found):
        if want == "K":
            if not isinstance(have, str):
                return False
        elif want != have:
            return False
    return True


def check_onnx_signature(entry: GraphEntry, graph_file: GraphFile) -> None:
    """The ONNX file declares exactly the manifest's inputs and outputs: names in order,
    shapes (fixed sizes and the dynamic object axis) and the file's dtype."""
    path = graph_file.path
    try:
        signature = read_signature(path)
    except (OnnxReadError, OSError) as error:
        raise ManifestError(f"{path} is not a readable ONNX model ({error}): re-export with `{EXPORT_HINT}`") from None
    dtype_name = str(graph_file.dtype).removeprefix("torch.")  # "float32", "float16": onnx_io's names
    for kind, listed, found in (("inputs", entry.inputs, signature.inputs), ("outputs", entry.outputs, signature.outputs)):
        listed_names = [spec.name for spec in listed]
        found_names = [value.name for value in found]
        if listed_names != found_names:
            raise ManifestError(
                f"{MANIFEST_NAME} lists {entry.name} {kind} {listed_names} but {path.name} has {found_names}: "
                f"the manifest does not belong to these files; re-export with `{EXPORT_HINT}`"
            )
        for spec, value in zip(listed, found):
            problem = _signature_problem(spec, value, dtype_name)
            if problem:
                listed_text, found_text = problem
                raise ManifestError(
                    f"{MANIFEST_NAME} gives {entry.name} {kind[:-1]} {spec.name} as {listed_text} but {path.name} has "
                    f"{found_text}: the manifest was edited or belongs to another export; re-export with `{EXPORT_HINT}`"
                )


def _signature_problem(spec: TensorSpec, value: ValueSignature, dtype_name: str) -> tuple[str, str] | None:
    """(as listed, as found) where the file disagrees with the manifest, else None."""
    if not _same_shape(spec.shape, value.shape):
        return _dims(spec.shape), _dims(value.shape)
    if value.dtype != dtype_name:
        return dtype_name, value.dtype
    return None


def checkpoint_manifest(
    model_config: ModelConfig, frame_size: tuple[int, int] | None = None, max_objects: int | None = None
) -> Manifest:
    """A manifest for the torch backend run straight from a checkpoint (no bundle).

    With ``frame_size`` None, every frame keeps its own size (padded to multiples of 16).
    """
    padded = pads = None
    if frame_size is not None:
        pads = pad_amounts(*frame_size)
        padded = (frame_size[0] + pads[2] + pads[3], frame_size[1] + pads[0] + pads[1])
    height, width = padded or ("H", "W")
    graphs = {}
    for name in graph_spec.GRAPHS:
        inputs, outputs = graph_spec.GRAPH_IO[name]
        graphs[name] = GraphEntry(
            name,
            tuple(TensorSpec(n, _symbolic_shape(n, model_config, height, width)) for n in inputs),
            tuple(TensorSpec(n, _symbolic_shape(n, model_config, height, width)) for n in outputs),
        )
    return Manifest(None, model_config, frame_size, padded, pads, max_objects, graphs)


def _symbolic_shape(name: str, config: ModelConfig, height: int | str, width: int | str) -> tuple[int | str, ...]:
    """Shape of a graph tensor; channels of f8/f4 depend on the trunk, so they stay symbolic."""
    def scaled(size: int | str, stride: int) -> int | str:
        return size // stride if isinstance(size, int) else f"{size}/{stride}"

    batch: int | str = "K" if name in graph_spec.OBJECT_AXIS_TENSORS else 1
    channels: dict[str, int | str] = {
        "image": 3, "masks": 1, "others": 1, "logits": 1,
        "key": config.key_dim, "f16x": config.value_dim, "value": config.value_dim, "readout": config.value_dim,
        "f8": "C8", "f4": "C4",
    }
    stride = {"key": 16, "f16x": 16, "value": 16, "readout": 16, "f8": 8, "f4": 4}.get(name, 1)
    return (batch, channels[name], scaled(height, stride), scaled(width, stride))

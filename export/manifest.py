"""manifest.json of an engine bundle (schema: docs/ARCHITECTURE.md, "The engine bundle").

The runtime trusts only this file and checks it against the files it names.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from eamstcn.checkpoint import file_sha256
from eamstcn.graph_spec import IMAGENET_MEAN, IMAGENET_STD
from eamstcn.manifest_spec import FORMAT_TAG, FORMAT_VERSION, MANIFEST_NAME, PRECISION_DTYPES


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def library_versions(tensorrt: str | None) -> dict[str, str | None]:
    """Versions of the libraries that produced the bundle (None where not installed)."""
    import eamstcn

    return {
        "eamstcn": eamstcn.__version__,
        "torch": _version("torch"),
        "timm": _version("timm"),
        "onnx": _version("onnx"),
        "onnxruntime": _version("onnxruntime") or _version("onnxruntime-gpu"),
        "onnxslim": _version("onnxslim"),
        "tensorrt": tensorrt,
    }


def file_entry(directory: Path, name: str, file_format: str, precision: str) -> dict[str, Any]:
    """One ``files`` entry: path relative to the bundle, format, precision, dtype, size, sha256."""
    path = directory / name
    return {
        "path": name,
        "format": file_format,
        "precision": precision,
        "dtype": PRECISION_DTYPES[precision],
        "bytes": path.stat().st_size,
        "sha256": file_sha256(path),
    }


def build_manifest(
    *,
    model_config: dict[str, Any],
    frame_size: tuple[int, int],
    padded_size: tuple[int, int],
    pads: tuple[int, int, int, int],
    max_objects: int,
    opset: int,
    checkpoint: Path,
    checkpoint_sha256: str,
    graphs: dict[str, dict[str, Any]],
    tensorrt: str | None,
    int8: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The manifest as a JSON-ready dict; ``graphs[name]`` holds inputs, outputs, files, parity.

    ``int8`` (INT8 exports only): the recipe, calibration source, what was kept in fp32
    and the measured parity (see :mod:`eamstcn.export.int8_export`).
    """
    precisions = sorted({entry["precision"] for graph in graphs.values() for entry in graph["files"]})
    manifest = {
        "format": FORMAT_TAG,
        "version": FORMAT_VERSION,
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "model_config": model_config,
        "frame_size": list(frame_size),
        "padded_size": list(padded_size),
        "pads": list(pads),
        "normalization": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "input": "RGB/255"},
        "max_objects": max_objects,
        "opset": opset,
        "checkpoint": {"file": checkpoint.name, "sha256": checkpoint_sha256},
        "versions": library_versions(tensorrt),
        "precisions": precisions,
        "graphs": graphs,
    }
    if int8 is not None:
        manifest["int8"] = int8
    return manifest


def write_manifest(directory: Path, manifest: dict[str, Any]) -> Path:
    """Write ``directory/manifest.json`` and flush it to disk (it is the bundle's last file)."""
    path = directory / MANIFEST_NAME
    with open(path, "w", encoding="utf-8") as stream:
        json.dump(manifest, stream, indent=2)
        stream.write("\n")
        stream.flush()
        os.fsync(stream.fileno())
    return path


def read_manifest(directory: Path) -> dict[str, Any] | None:
    """The manifest of ``directory`` if it is one of our bundles, else None."""
    try:
        with open(directory / MANIFEST_NAME, encoding="utf-8") as stream:
            manifest = json.load(stream)
    except (OSError, ValueError):
        return None
    if isinstance(manifest, dict) and manifest.get("format") == FORMAT_TAG:
        return manifest
    return None


def is_bundle(directory: Path) -> bool:
    """True for a folder holding a manifest.json of our format (safe to replace)."""
    return directory.is_dir() and read_manifest(directory) is not None

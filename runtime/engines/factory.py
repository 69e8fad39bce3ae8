"""Pick a backend from what is installed, the device and the bundle, and open its engines.

``auto`` order on CUDA: TensorRT (plans in the bundle and ``tensorrt`` importable) >
ONNX Runtime with the CUDA provider > the torch path (needs a checkpoint). On the CPU:
ONNX Runtime if installed, else torch. The EngineSet's ``reason`` says why.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch

from eamstcn.runtime.engines.base import EngineError, EngineSet, normalize_device
from eamstcn.runtime.manifest import EXPORT_HINT, Manifest, load_manifest

BACKENDS = ("auto", "torch", "onnxruntime", "tensorrt")
PRECISIONS = ("auto", "fp32", "fp16")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """CUDA when available, else the CPU (never MPS by surprise); explicit names are checked."""
    if device is None:
        return normalize_device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise EngineError(f"unknown device {device!r}: use cpu, cuda or cuda:N") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise EngineError(f"device {device} requested but CUDA is not available here")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise EngineError(f"device {device} requested but there are {torch.cuda.device_count()} CUDA devices")
    elif resolved.type != "cpu":
        raise EngineError(f"device {device}: the runtime runs on cpu or cuda")
    return normalize_device(resolved)


def open_engines(
    engines_dir: str | Path | None = None,
    checkpoint: str | Path | None = None,
    backend: str = "auto",
    device: str | torch.device | None = None,
    precision: str = "auto",
    frame_size: tuple[int, int] | None = None,
    verify: Literal["size", "sha256"] = "size",
) -> EngineSet:
    """Open the three engines.

    Args:
        engines_dir: bundle folder with manifest.json (from eamstcn-export).
        checkpoint: best.pth for the torch backend (and ``auto`` when no bundle is given).
        backend: "auto", "torch", "onnxruntime" or "tensorrt".
        device: "cpu", "cuda", "cuda:N" or None (CUDA if available, else CPU).
        precision: "auto" (fp16 on CUDA where the bundle has it, else fp32), "fp32", "fp16".
        frame_size: (H, W) for the torch backend without a bundle; None keeps each
            frame's own size.
        verify: "size" (default) or "sha256" to hash every bundle file at open.
    Raises:
        EngineError / ManifestError (both ValueError) with a one-line message.
    """
    if backend not in BACKENDS:
        raise EngineError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if precision not in PRECISIONS:
        raise EngineError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    dev = resolve_device(device)
    if engines_dir is None and checkpoint is None:
        raise EngineError(f"no engines: pass an engines folder (build one with `{EXPORT_HINT}`) or a checkpoint")
    manifest = load_manifest(engines_dir, verify) if engines_dir is not None else None

    if backend == "auto":
        backend, reason, dev = _choose(manifest, checkpoint, dev)
    else:
        reason = "requested"
    if backend == "torch":
        if checkpoint is None:
            raise EngineError("the torch backend needs a checkpoint (--checkpoint best.pth)")
        from eamstcn.runtime.engines.torch_engine import open_torch_engines

        chosen = _precision(precision, dev, {"fp32", "fp16"} if dev.type == "cuda" else {"fp32"})
        return open_torch_engines(checkpoint, dev, chosen, manifest, frame_size, reason)
    if manifest is None:
        raise EngineError(f"the {backend} backend needs an engines folder: build one with `{EXPORT_HINT}`")
    if backend == "onnxruntime":
        from eamstcn.runtime.engines.onnxruntime_engine import open_onnxruntime_engines

        available = manifest.precisions("onnx") if dev.type == "cuda" else {"fp32"}
        return open_onnxruntime_engines(manifest, dev, _precision(precision, dev, available), reason)
    from eamstcn.runtime.engines.tensorrt_engine import open_tensorrt_engines

    return open_tensorrt_engines(manifest, dev, _precision(precision, dev, manifest.precisions("tensorrt")), reason)


def _precision(requested: str, device: torch.device, available: set[str]) -> str:
    """fp16 on CUDA when the files exist and nothing else was asked; else fp32."""
    if requested != "auto":
        return requested
    if device.type == "cuda" and "fp16" in available:
        return "fp16"
    return "fp32" if "fp32" in available or not available else sorted(available)[0]


def _choose(manifest: Manifest | None, checkpoint: str | Path | None, device: torch.device) -> tuple[str, str, torch.device]:
    """(backend, why, device) for ``auto``."""
    from eamstcn.runtime.engines.onnxruntime_engine import cuda_provider_available
    from eamstcn.runtime.engines.tensorrt_engine import tensorrt_available

    ort_installed = _onnxruntime_installed()
    if manifest is None:
        return "torch", "auto: a checkpoint and no engine bundle", device
    if device.type == "cuda":
        if manifest.precisions("tensorrt") and tensorrt_available():
            return "tensorrt", "auto: CUDA, TensorRT plans in the bundle and tensorrt installed", device
        if cuda_provider_available():
            return "onnxruntime", "auto: CUDA and onnxruntime with the CUDA provider (no usable TensorRT plans)", device
        if checkpoint is not None:
            return "torch", "auto: CUDA, no TensorRT and no onnxruntime CUDA provider: the PyTorch path", device
        if ort_installed:
            return "onnxruntime", "auto: CUDA present but neither TensorRT, onnxruntime-gpu nor a checkpoint: onnxruntime on the CPU", torch.device("cpu")
        raise EngineError("no usable backend: install onnxruntime-gpu or tensorrt, or pass --checkpoint for the torch path")
    if ort_installed:
        return "onnxruntime", "auto: CPU and onnxruntime installed", device
    if checkpoint is not None:
        return "torch", "auto: CPU, onnxruntime not installed: the PyTorch path", device
    raise EngineError("backend onnxruntime is not installed: pip install onnxruntime, or pass --checkpoint for the torch path")


def _onnxruntime_installed() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True

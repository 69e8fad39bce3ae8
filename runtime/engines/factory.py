"""Pick a backend from what is installed, the device, the bundle and the precision asked
for, and open its engines.

``auto`` tries, in order, every backend that can give the requested precision, and falls
back to the next when one cannot open (a TensorRT plan built for another GPU or TensorRT
version, CUDA libraries that fail to load): on CUDA, TensorRT (plans in the bundle and
``tensorrt`` importable) > ONNX Runtime with the CUDA provider > the torch path (needs a
checkpoint) > ONNX Runtime on the CPU; on the CPU, ONNX Runtime, else torch. INT8 engines
are CPU engines (ONNX Runtime's CPU provider). The EngineSet's ``reason`` says what was
picked, why, and what was tried first and failed.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Literal

import torch

from eamstcn.runtime.engines.base import EngineError, EngineSet, normalize_device
from eamstcn.runtime.manifest import EXPORT_HINT, Manifest, load_manifest

BACKENDS = ("auto", "torch", "onnxruntime", "tensorrt")
PRECISIONS = ("auto", "fp32", "fp16", "int8")


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
        precision: "auto" (fp16 on CUDA where the bundle has it, else fp32), "fp32",
            "fp16" (CUDA) or "int8" (ONNX Runtime on the CPU; exported with --int8).
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
        return _open_auto(manifest, checkpoint, dev, precision, frame_size)
    return _open(backend, manifest, checkpoint, dev, precision, frame_size, "requested")


#: One way to open the engines: (backend, device, precision, why this one).
Candidate = tuple[str, torch.device, str, str]


def _open(
    backend: str, manifest: Manifest | None, checkpoint: str | Path | None, dev: torch.device, precision: str,
    frame_size: tuple[int, int] | None, reason: str,
) -> EngineSet:
    """Open ``backend`` at ``precision`` ("auto" resolved here); EngineError when it cannot."""
    if backend == "torch":
        if checkpoint is None:
            raise EngineError("the torch backend needs a checkpoint (--checkpoint best.pth)")
        if precision == "int8":
            raise EngineError("int8 runs on exported engines: use --backend onnxruntime with a bundle from `eamstcn-export --int8`")
        from eamstcn.runtime.engines.torch_engine import open_torch_engines

        chosen = _precision(precision, dev, {"fp32", "fp16"} if dev.type == "cuda" else {"fp32"})
        return open_torch_engines(checkpoint, dev, chosen, manifest, frame_size, reason)
    if manifest is None:
        raise EngineError(f"the {backend} backend needs an engines folder: build one with `{EXPORT_HINT}`")
    if backend == "onnxruntime":
        from eamstcn.runtime.engines.onnxruntime_engine import open_onnxruntime_engines

        if precision == "int8":
            if dev.type != "cpu":
                raise EngineError("int8 engines run on ONNX Runtime's CPU provider: use --device cpu")
            if "int8" not in manifest.precisions("onnx"):
                raise EngineError("the engine bundle has no int8 ONNX files: re-export with `eamstcn-export --checkpoint best.pth --int8`")
            engines = open_onnxruntime_engines(manifest, dev, "int8", reason)
            engines.reason = f"{engines.reason}; {int8_graphs_line(manifest.raw)}"
            return _warn(engines, duplicate_installs() + _saturation(engines))
        available = manifest.precisions("onnx") - {"int8"} if dev.type == "cuda" else {"fp32"}
        engines = open_onnxruntime_engines(manifest, dev, _precision(precision, dev, available), reason)
        return _warn(engines, duplicate_installs())
    from eamstcn.runtime.engines.tensorrt_engine import open_tensorrt_engines

    if precision == "int8":
        raise EngineError("the bundle's int8 engines are ONNX Runtime CPU engines; TensorRT plans are fp16")
    return open_tensorrt_engines(manifest, dev, _precision(precision, dev, manifest.precisions("tensorrt")), reason)


#: Distributions that install the same module: only one of each pair may be installed.
EXCLUSIVE = (("onnxruntime", "onnxruntime-gpu"), ("opencv-python", "opencv-python-headless"))


def duplicate_installs(installed: Callable[[str], bool] | None = None) -> list[str]:
    """One line per pair of :data:`EXCLUSIVE` distributions installed together (the module
    is whichever pip wrote last, e.g. onnxruntime without its CUDA provider)."""
    def present(name: str) -> bool:
        try:
            metadata.version(name)
        except metadata.PackageNotFoundError:
            return False
        return True

    installed = installed or present
    return [
        f"{first} and {second} are both installed and share one module: pip uninstall both, then install one "
        f"(eamstcn[cpu]/[gpu], [headless]/[gui])"
        for first, second in EXCLUSIVE
        if installed(first) and installed(second)
    ]


def int8_graphs_line(raw_manifest: dict) -> str:
    """Which graphs of an int8 bundle really run in INT8, and why the others stay fp32
    (the export keeps a graph fp32 when INT8 is too little faster or moves the masks)."""
    from eamstcn.graph_spec import GRAPHS

    section = raw_manifest.get("int8") or {}
    fp32 = [name for name in GRAPHS if name in (section.get("fp32_graphs") or [])]
    int8 = [name for name in GRAPHS if name not in fp32]
    reasons = section.get("fp32_reasons") or {}
    kept = ", ".join(f"{name} ({reasons[name]})" if name in reasons else name for name in fp32)
    return f"INT8 graphs: {', '.join(int8) or 'none'}" + (f"; kept in fp32: {kept}" if fp32 else "")


def _saturation(engines: EngineSet) -> list[str]:
    """A warning when INT8 engines quantized for VNNI CPUs run on a CPU without VNNI."""
    from eamstcn.cpu_features import int8_saturation_risk

    risk = int8_saturation_risk(engines.manifest.raw.get("int8", {}).get("recipe", {}))
    return [risk] if risk else []


def _warn(engines: EngineSet, warnings: list[str]) -> EngineSet:
    """Add ``warnings`` to the engines' notes and to the reason line users see."""
    engines.notes.extend(warnings)
    for line in warnings:
        engines.reason = f"{engines.reason}; warning: {line}"
    return engines


def _precision(requested: str, device: torch.device, available: set[str]) -> str:
    """fp16 on CUDA when the files exist and nothing else was asked; else fp32."""
    if requested != "auto":
        return requested
    if device.type == "cuda" and "fp16" in available:
        return "fp16"
    return "fp32" if "fp32" in available or not available else sorted(available)[0]


def _candidates(
    manifest: Manifest | None, checkpoint: str | Path | None, device: torch.device, precision: str
) -> tuple[list[Candidate], list[str]]:
    """Backends ``auto`` tries, best first, and why others were not considered."""
    from eamstcn.runtime.engines.onnxruntime_engine import cuda_provider_available
    from eamstcn.runtime.engines.tensorrt_engine import tensorrt_available

    cpu = torch.device("cpu")
    skipped: list[str] = []
    if manifest is None:
        if precision == "int8":
            raise EngineError("int8 needs an engine bundle exported with --int8 (pass --engines)")
        return [("torch", device, precision, "auto: a checkpoint and no engine bundle")], skipped
    ort_installed = _onnxruntime_installed()
    onnx_precisions = manifest.precisions("onnx")
    if precision == "int8":
        if "int8" not in onnx_precisions:
            raise EngineError("--precision int8: the engine bundle has no int8 files: re-export with `eamstcn-export --checkpoint best.pth --int8`")
        if not ort_installed:
            raise EngineError("--precision int8 needs onnxruntime: pip install 'eamstcn[cpu]'")
        why = "auto: int8 engines run on ONNX Runtime's CPU provider"
        return [("onnxruntime", cpu, "int8", why + (" (CUDA left unused)" if device.type == "cuda" else ""))], skipped

    candidates: list[Candidate] = []
    if device.type == "cuda":
        wanted_trt = _precision(precision, device, manifest.precisions("tensorrt"))
        if wanted_trt not in manifest.precisions("tensorrt"):
            skipped.append(f"tensorrt: no {wanted_trt} plans in the bundle")
        elif not tensorrt_available():
            skipped.append("tensorrt: not installed")
        else:
            candidates.append(("tensorrt", device, precision, "auto: CUDA, TensorRT plans in the bundle and tensorrt installed"))
        wanted_onnx = _precision(precision, device, onnx_precisions - {"int8"})
        if wanted_onnx not in onnx_precisions:
            skipped.append(f"onnxruntime CUDA: no {wanted_onnx} ONNX files in the bundle")
        elif not cuda_provider_available():
            skipped.append("onnxruntime CUDA: no CUDA provider (pip install 'eamstcn[gpu]')")
        else:
            candidates.append(("onnxruntime", device, precision, "auto: CUDA and onnxruntime with the CUDA provider"))
        if checkpoint is not None:
            candidates.append(("torch", device, precision, "auto: CUDA: the PyTorch path"))
        if ort_installed and precision in ("auto", "fp32"):
            candidates.append(("onnxruntime", cpu, "fp32", "auto: CUDA present but no GPU backend opened: onnxruntime on the CPU"))
        if not candidates:
            raise EngineError(
                f"no usable backend for precision {precision} ({'; '.join(skipped)}): install onnxruntime-gpu or tensorrt, "
                "re-export the bundle, or pass --checkpoint for the torch path"
            )
        return candidates, skipped
    if precision == "fp16":
        raise EngineError("fp16 engines need a CUDA device: on the CPU use --precision fp32 or int8")
    if ort_installed:
        note = " (the bundle also has int8 engines: --precision int8)" if "int8" in onnx_precisions else ""
        candidates.append(("onnxruntime", device, "fp32", f"auto: CPU and onnxruntime installed{note}"))
    elif checkpoint is not None:
        skipped.append("onnxruntime not installed")
    if checkpoint is not None:
        candidates.append(("torch", device, "fp32", "auto: CPU: the PyTorch path"))
    if not candidates:
        raise EngineError("backend onnxruntime is not installed: pip install 'eamstcn[cpu]', or pass --checkpoint for the torch path")
    return candidates, skipped


def _open_auto(
    manifest: Manifest | None, checkpoint: str | Path | None, device: torch.device, precision: str,
    frame_size: tuple[int, int] | None,
) -> EngineSet:
    """Open the first candidate that opens; the reason names the ones that failed and why."""
    candidates, skipped = _candidates(manifest, checkpoint, device, precision)
    failures: list[str] = []
    for backend, dev, wanted, why in candidates:
        try:
            engines = _open(backend, manifest, checkpoint, dev, wanted, frame_size, why)
        except EngineError as error:
            failures.append(f"{backend} on {dev.type}: {error}")
            continue
        history = skipped + failures
        if history:
            engines.reason = f"{engines.reason}; not used: {'; '.join(history)}"
        return engines
    raise EngineError("no backend could open these engines: " + "; ".join(failures))


def _onnxruntime_installed() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True

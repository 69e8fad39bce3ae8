"""The export pipeline: checkpoint -> three ONNX graphs (+ fp16, + TensorRT plans) -> bundle.

Everything is built in a hidden folder beside the destination and renamed into place at the
end (:mod:`eamstcn.export.destination`), so a crash or a failed parity check never leaves a
half-written bundle. An existing bundle is replaced; a folder that is not one is never touched.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eamstcn import ops
from eamstcn.checkpoint import CheckpointError, build_model, file_sha256, load_checkpoint
from eamstcn.cpu_features import detect_target
from eamstcn.export import fp16 as fp16_graphs
from eamstcn.export.calibration_source import DEFAULT_FRAMES as DEFAULT_CALIBRATION_FRAMES
from eamstcn.export.calibration_source import CalibrationSource, load_calibration
from eamstcn.export.destination import staged_bundle
from eamstcn.export.errors import ExportError
from eamstcn.export.int8_target import TARGETS as INT8_TARGETS
from eamstcn.export.int8_target import Int8Recipe, recipe as int8_recipe
from eamstcn.export.manifest import build_manifest, file_entry, write_manifest
from eamstcn.export.onnx_export import MIN_OPSET, check, max_opset, object_axes, simplify, to_onnx
from eamstcn.export.parity import (
    FP32_TOLERANCE,
    PARITY_OBJECTS,
    TRACE_OBJECTS,
    ErrorStats,
    ParityCase,
    fp16_provider,
    make_case,
    measure,
    trace_inputs,
)
from eamstcn.export.tensorrt_build import TensorRTBuildError, build_engine, profile_shapes, tensorrt_version
from eamstcn.export.wrappers import graph_wrappers
from eamstcn.graph_spec import GRAPH_IO, OBJECT_AXIS_TENSORS, STRIDE
from eamstcn.network import EamStcn
from eamstcn.network.backbone import BackboneError

#: Smallest frame side we export for: below it the stride-16 maps are 1-2 cells wide.
MIN_SIDE = 32
#: fp16 parity above this is reported as a warning (it is never a failure).
FP16_WARN_REL = 1e-2
NOT_MEASURED = "not measured on this machine"

Progress = Callable[[str], None]


@dataclass(frozen=True)
class ExportConfig:
    """What to export and how; built by the CLI from flags (or by code and tests directly).

    ``frame_size`` is the (H, W) the runtime resizes frames to; the graphs take it padded
    to multiples of 16 (see :func:`eamstcn.ops.pad_amounts`).
    """

    checkpoint: Path
    out: Path = Path("engines")
    fp16: bool = False
    frame_size: tuple[int, int] = (480, 854)
    max_objects: int = 4
    opset: int = MIN_OPSET
    simplify: bool = True
    trt: bool = True
    workspace_gb: float = 2.0
    tolerance: float = FP32_TOLERANCE
    # INT8 (CPU engines): calibration frames from ``calibration`` (a folder, a video or a
    # DAVIS dataset; None: generated clips), recipe for ``int8_target`` (see int8_target).
    int8: bool = False
    calibration: Path | None = None
    calibration_frames: int = DEFAULT_CALIBRATION_FRAMES
    calibration_sequences: tuple[str, ...] | None = None  # DAVIS calibration: these sequences only
    int8_target: str = "auto"
    int8_min_agreement: float = 0.98  # mean mask IoU INT8 vs fp32 below which graphs stay fp32
    int8_min_speedup: float = 1.1  # INT8 graphs less than this faster than fp32 (on this CPU) stay fp32 (int8_export.MIN_SPEEDUP)


@dataclass(frozen=True)
class FileReport:
    """One file of the bundle, for the summary table."""

    graph: str
    path: str
    file_format: str
    precision: str
    bytes: int
    parity: dict[str, ErrorStats] | None  # None: not measured (plans; fp16 where ORT cannot)


@dataclass(frozen=True)
class ExportResult:
    out: Path
    manifest: dict[str, Any]
    files: list[FileReport]
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def validate(config: ExportConfig) -> None:
    """Raise :class:`ExportError` for settings that cannot give a working bundle."""
    height, width = config.frame_size
    if min(height, width) < MIN_SIDE:
        raise ExportError(f"frame size {height}x{width} is too small for the network: each side must be at least {MIN_SIDE} px")
    if config.max_objects < 1:
        raise ExportError(f"--max-objects must be at least 1, got {config.max_objects}")
    if not MIN_OPSET <= config.opset <= max_opset():
        raise ExportError(f"--opset {config.opset} is not supported: use {MIN_OPSET}..{max_opset()} (this torch)")
    if not config.workspace_gb > 0:
        raise ExportError(f"--workspace must be positive (GiB), got {config.workspace_gb}")
    if not config.tolerance > 0:
        raise ExportError(f"parity tolerance must be positive, got {config.tolerance}")
    if config.int8_target not in INT8_TARGETS:
        raise ExportError(f"--int8-target {config.int8_target!r} is unknown: choose one of {', '.join(INT8_TARGETS)}")
    if config.calibration_frames < 2:
        raise ExportError(f"--calibration-frames must be at least 2, got {config.calibration_frames}")
    if not config.int8_min_speedup >= 0:
        raise ExportError(f"--int8-min-speedup must be >= 0, got {config.int8_min_speedup}")
    if not 0.0 <= config.int8_min_agreement <= 1.0:
        raise ExportError(f"--int8-min-iou must be in [0, 1], got {config.int8_min_agreement}")
    if not config.int8 and config.calibration is not None:
        raise ExportError("--calibration is only used with --int8")


def _load_model(path: Path) -> EamStcn:
    try:
        return build_model(load_checkpoint(path), str(path))
    except (CheckpointError, BackboneError) as error:
        raise ExportError(str(error)) from None


def _manifest_shape(name: str, tensor: torch.Tensor) -> list[int | str]:
    shape: list[int | str] = list(tensor.shape)
    if name in OBJECT_AXIS_TENSORS:
        shape[0] = "K"
    return shape


def _parity_dict(stats: dict[str, ErrorStats]) -> dict[str, dict[str, float]]:
    return {label: value.to_dict() for label, value in stats.items()}


def _worst_rel(stats: dict[str, ErrorStats]) -> tuple[str, float]:
    label = max(stats, key=lambda key: stats[key].max_rel if math.isfinite(stats[key].max_rel) else math.inf)
    return label, stats[label].max_rel


def _within(stats: dict[str, ErrorStats], tolerance: float) -> bool:
    return all(math.isfinite(value.max_rel) and value.max_rel <= tolerance for value in stats.values())


def _checked(path: Path) -> None:
    try:
        check(path)
    except Exception as error:  # onnx raises ValidationError / InferenceError
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ExportError(f"the ONNX checker rejected {path.name}: {first_line}") from None


def _export_fp32(
    name: str, wrapper: torch.nn.Module, trace_case: ParityCase, cases: list[ParityCase], config: ExportConfig,
    staging: Path, say: Progress, notes: list[str],
) -> dict[str, ErrorStats]:
    """Write ``name.onnx`` (simplified where that helps and keeps parity); returns its parity."""
    input_names, output_names = GRAPH_IO[name]
    path = staging / f"{name}.onnx"
    say(f"{name}: tracing to ONNX (opset {config.opset})")
    try:
        to_onnx(wrapper, trace_inputs(trace_case, name), path, input_names, output_names,
                object_axes(input_names + output_names), config.opset)
    except Exception as error:
        raise ExportError(f"torch.onnx.export failed for {name}: {str(error).strip().splitlines()[0]}") from None
    _checked(path)
    if config.simplify:
        slim = staging / f"{name}.slim.onnx"
        say(f"{name}: simplifying with onnxslim")
        if simplify(path, slim):
            _checked(slim)
            say(f"{name}: parity of the simplified graph (ONNX Runtime vs PyTorch, K={PARITY_OBJECTS})")
            stats = measure(slim, name, cases)
            if _within(stats, config.tolerance):
                os.replace(slim, path)
                return stats
            slim.unlink()
            notes.append(f"{name}: onnxslim result dropped (max rel error {_worst_rel(stats)[1]:.2e}); kept the plain export")
        else:
            notes.append(f"{name}: onnxslim gave no smaller graph; kept the plain export")
    say(f"{name}: parity (ONNX Runtime vs PyTorch, K={PARITY_OBJECTS})")
    return measure(path, name, cases)


def _export_fp16(name: str, cases: list[ParityCase], staging: Path, say: Progress, notes: list[str]) -> dict[str, ErrorStats] | str:
    """Write ``name.fp16.onnx`` from ``name.onnx``; returns its parity or why it was not measured."""
    source, path = staging / f"{name}.onnx", staging / f"{name}.fp16.onnx"
    say(f"{name}: converting to FP16")
    clipped = fp16_graphs.write_fp16(source, path)
    if clipped:
        notes.append(f"{name}: {clipped} weight values exceed the FP16 range and were clipped to +-65504")
    _checked(path)
    provider = fp16_provider()  # fp16 runs on CUDA: measure it there when this machine can
    say(f"{name}: FP16 parity (ONNX Runtime {provider} vs PyTorch fp32)")
    try:
        stats = measure(path, name, cases, dtype=np.float16, provider=provider)
    except Exception as error:  # ORT builds without some fp16 CPU kernels: not an export failure
        reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        notes.append(f"{name}: FP16 parity {NOT_MEASURED} ({reason})")
        return f"{NOT_MEASURED}: {reason}"
    label, worst_rel = _worst_rel(stats)
    if not worst_rel <= FP16_WARN_REL:
        notes.append(f"{name}: FP16 max rel error {worst_rel:.2e} at {label} (check FP16 accuracy on your data)")
    return stats


def _build_plans(
    config: ExportConfig, graphs: dict[str, dict[str, Any]], staging: Path, say: Progress, notes: list[str],
    reports: list[FileReport],
) -> str | None:
    """TensorRT FP16 plans from the fp16 ONNX files, added to ``graphs`` entries and ``reports``.

    Returns the TensorRT version, or None (and one note) where tensorrt does not import.
    """
    version = tensorrt_version()
    if version is None:
        line = "TensorRT engines skipped: tensorrt is not installed here (the ONNX bundle is complete)"
        notes.append(line)
        say(line)
        return None
    for name, entry in graphs.items():
        say(f"{name}: building the TensorRT {version} FP16 plan (K 1..{config.max_objects})")
        inputs = {item["name"]: item["shape"] for item in entry["inputs"]}
        plan = f"{name}.fp16.plan"
        try:
            build_engine(staging / f"{name}.fp16.onnx", staging / plan, profile_shapes(inputs, config.max_objects), config.workspace_gb)
        except TensorRTBuildError as error:
            raise ExportError(str(error)) from None
        entry["files"].append(file_entry(staging, plan, "tensorrt", "fp16"))
        reports.append(FileReport(name, plan, "tensorrt", "fp16", entry["files"][-1]["bytes"], None))
    return version


def _add_int8(
    config: ExportConfig, staging: Path, calibration: CalibrationSource, cases: list[ParityCase],
    graphs: dict[str, dict[str, Any]], reports: list[FileReport], say: Progress, notes: list[str],
) -> dict[str, Any]:
    """``<graph>.int8.onnx`` for every graph, added to ``graphs`` and ``reports``; returns
    the manifest's ``int8`` section."""
    from eamstcn.export.int8_export import export_int8

    recipe: Int8Recipe = int8_recipe(config.int8_target)
    # This CPU's timings only speak for a recipe made for this CPU class.
    local = config.int8_target in ("auto", detect_target()[0])
    result = export_int8(staging, config.frame_size, calibration, recipe, cases, say, config.int8_min_agreement,
                         config.int8_min_speedup if local else None)
    for name, entry in graphs.items():
        path = result.files[name]
        entry["files"].append(file_entry(staging, path, "onnx", "int8"))
        if name in result.fp32_graphs:
            entry["files"][-1]["note"] = f"the fp32 graph: {result.manifest['fp32_reasons'][name]}"
            notes.append(f"{name}: kept in fp32 in the INT8 engines ({result.manifest['fp32_reasons'][name]})")
        entry["parity"]["onnx/int8"] = {
            **_parity_dict(result.parity[name]),
            "held_out_vs_fp32_onnx": result.graphs[name].error.to_dict(),
        }
        reports.append(FileReport(name, path, "onnx", "int8", entry["files"][-1]["bytes"], result.parity[name]))
    agreement = result.manifest["mask_agreement"]
    notes.append(
        f"INT8 masks vs fp32 over {agreement['frames']} calibration frames: mean IoU {agreement['mean_iou']:.4f}, "
        f"min {agreement['min_iou']:.4f} ({calibration.kind} calibration, {result.manifest['recipe']['target']} recipe)"
    )
    return result.manifest


def _build(
    config: ExportConfig, model: EamStcn, staging: Path, say: Progress, calibration: CalibrationSource | None = None,
) -> tuple[dict[str, Any], list[FileReport], list[str]]:
    """Write every file of the bundle into ``staging``; returns the manifest, file reports and notes."""
    notes: list[str] = []
    frame_size = config.frame_size
    padded = ops.padded_size(*frame_size, STRIDE)
    say(f"generating parity inputs: {frame_size[0]}x{frame_size[1]} frames padded to {padded[0]}x{padded[1]}, K={PARITY_OBJECTS}")
    cases = [make_case(model, frame_size, count) for count in PARITY_OBJECTS]
    trace_case = make_case(model, frame_size, TRACE_OBJECTS)

    graphs: dict[str, dict[str, Any]] = {}
    reports: list[FileReport] = []
    for name, wrapper in graph_wrappers(model).items():
        stats = _export_fp32(name, wrapper, trace_case, cases, config, staging, say, notes)
        if not _within(stats, config.tolerance):
            label, worst_rel = _worst_rel(stats)
            raise ExportError(
                f"{name}: ONNX Runtime differs from PyTorch beyond tolerance (max rel error {worst_rel:.2e} at {label} > "
                f"{config.tolerance:.0e}); no bundle was written"
            )
        files = [file_entry(staging, f"{name}.onnx", "onnx", "fp32")]
        parity: dict[str, Any] = {"onnx/fp32": _parity_dict(stats)}
        reports.append(FileReport(name, f"{name}.onnx", "onnx", "fp32", files[-1]["bytes"], stats))
        if config.fp16:
            stats16 = _export_fp16(name, cases, staging, say, notes)
            files.append(file_entry(staging, f"{name}.fp16.onnx", "onnx", "fp16"))
            parity["onnx/fp16"] = {**_parity_dict(stats16), "provider": fp16_provider()} if isinstance(stats16, dict) else stats16
            reports.append(FileReport(name, f"{name}.fp16.onnx", "onnx", "fp16", files[-1]["bytes"],
                                      stats16 if isinstance(stats16, dict) else None))
        inputs = {key: _manifest_shape(key, value) for key, value in trace_case.inputs[name].items()}
        outputs = {key: _manifest_shape(key, value) for key, value in trace_case.expected[name].items()}
        graphs[name] = {
            "inputs": [{"name": key, "shape": shape} for key, shape in inputs.items()],
            "outputs": [{"name": key, "shape": shape} for key, shape in outputs.items()],
            "files": files,
            "parity": parity,
        }

    int8 = _add_int8(config, staging, calibration, cases, graphs, reports, say, notes) if calibration is not None else None
    trt_version = _build_plans(config, graphs, staging, say, notes, reports) if config.fp16 and config.trt else None
    manifest = build_manifest(
        model_config=model.config.to_dict(),
        frame_size=frame_size,
        padded_size=padded,
        pads=ops.pad_amounts(*frame_size, STRIDE),
        max_objects=config.max_objects,
        opset=config.opset,
        checkpoint=Path(config.checkpoint),
        checkpoint_sha256=file_sha256(config.checkpoint),
        graphs=graphs,
        tensorrt=trt_version,
        int8=int8,
    )
    write_manifest(staging, manifest)
    return manifest, reports, notes


def export_bundle(config: ExportConfig, progress: Progress | None = None) -> ExportResult:
    """Export ``config.checkpoint`` into the bundle folder ``config.out``.

    Raises :class:`ExportError` (one-line message) for bad settings, an unusable
    checkpoint, an output path that must not be overwritten, or a failed fp32 parity
    check; in every failure case nothing is left on disk.
    """
    say = progress or (lambda _message: None)
    started = time.perf_counter()
    validate(config)
    model = _load_model(Path(config.checkpoint))
    # Read the calibration frames first: a bad --calibration fails before minutes of export.
    calibration = load_calibration(config.calibration, config.frame_size, config.calibration_frames,
                                   config.calibration_sequences) if config.int8 else None
    out = Path(config.out).absolute()
    with staged_bundle(out) as staging:
        manifest, reports, notes = _build(config, model, staging, say, calibration)
        say(f"installing the bundle at {out}")
    return ExportResult(out=out, manifest=manifest, files=reports, notes=notes, seconds=time.perf_counter() - started)

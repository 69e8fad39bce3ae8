"""DAVIS semi-supervised evaluation through the deployed per-frame session.

Every sequence runs through :class:`eamstcn.runtime.session.Session` (the code
``eamstcn-run`` uses) on the torch backend of a checkpoint or on an exported engine
bundle, so scores describe what users run. Frames are read before timing; FPS is frames
over the time spent in ``Session.step``, with device synchronisation, I/O excluded.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from eamstcn.graph_spec import STRIDE
from eamstcn.ops import padded_size

from eamstcn.data.davis_io import frame_paths, list_sequences, load_sequence, write_indexed_png
from eamstcn.evaluation.davis_eval import EvalResult, evaluate_predictions
from eamstcn.fileio import output_problem
from eamstcn.runtime.config import MemoryConfig, SaveConfig


class EvalError(ValueError):
    """An evaluation that cannot start or whose outputs cannot be written; one line."""


@dataclass(frozen=True)
class EvalOptions:
    data: Path
    out: Path
    checkpoint: Path | None = None
    engines: Path | None = None
    backend: str = "auto"
    precision: str = "auto"  # auto, fp32, fp16 or int8 (see open_engines)
    device: str | None = None
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    save: SaveConfig = field(default_factory=SaveConfig)
    size: tuple[int, int] | None = None  # (H, W) frames are resized to (torch backend); None: native
    sequences: tuple[str, ...] | None = None
    #: DAVIS resolution folder; None: 480p, else Full-Resolution, else the only one (as train).
    resolution: str | None = None


@dataclass(frozen=True)
class SequenceRun:
    """One sequence through the session: frames processed, frames written into memory and
    the seconds spent in ``Session.step``."""

    name: str
    objects: int
    frames: int
    stored: int
    seconds: float

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else float("nan")


@dataclass
class EvalReport:
    runs: list[SequenceRun]
    result: EvalResult
    engines: str  # backend / precision / device line

    def rows(self) -> list[dict[str, str | int | float]]:
        """Per sequence: J&F, J, F (0..100, mean over its objects), frames, stored, FPS."""
        rows: list[dict[str, str | int | float]] = []
        for run in self.runs:
            objects = [o for o in self.result.objects if o.sequence == run.name]
            j = 100 * float(np.mean([o.j_mean for o in objects])) if objects else float("nan")
            f = 100 * float(np.mean([o.f_mean for o in objects])) if objects else float("nan")
            rows.append({"Sequence": run.name, "Objects": run.objects, "J&F": (j + f) / 2, "J": j, "F": f,
                         "Frames": run.frames, "Stored": run.stored, "FPS": run.fps})
        return rows

    def summary(self) -> dict[str, float | int]:
        """Dataset J&F, J, F (0..100, averaged over all objects, as DAVIS), total frames
        stored, FPS over all frames."""
        scores = self.result.summary()
        frames = sum(r.frames for r in self.runs)
        seconds = sum(r.seconds for r in self.runs)
        return {"J&F": 100 * scores["J&F-Mean"], "J": 100 * scores["J-Mean"], "F": 100 * scores["F-Mean"],
                "Frames": frames, "Stored": sum(r.stored for r in self.runs),
                "FPS": frames / seconds if seconds > 0 else float("nan")}

    def write(self, out: Path) -> Path:
        """``global_results.csv`` and ``per-sequence_results.csv`` (official columns, per
        object) and ``eval_summary.csv`` (per sequence, then the ``ALL`` row). Returns the last."""
        self.result.write_csv(out)
        path = out / "eval_summary.csv"
        columns = ["Sequence", "Objects", "J&F", "J", "F", "Frames", "Stored", "FPS"]
        total = {"Sequence": "ALL", "Objects": len(self.result.objects), **self.summary()}
        with path.open("w", newline="", encoding="utf-8") as stream:
            writer = csv.DictWriter(stream, columns)
            writer.writeheader()
            for row in [*self.rows(), total]:
                writer.writerow({k: f"{v:.3f}" if isinstance(v, float) else v for k, v in row.items()})
        return path


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _segment(session, frames: np.ndarray, first_mask: np.ndarray) -> tuple[np.ndarray, float]:
    """Run one sequence; returns predicted ids (T, H, W) uint8 and seconds in ``step``."""
    device = session.device
    labels = np.empty(frames.shape[:3], dtype=np.uint8)
    mask = torch.from_numpy(first_mask)
    seconds = 0.0
    for t, frame in enumerate(frames):
        tensor = torch.from_numpy(frame)
        _synchronize(device)
        start = time.perf_counter()
        probabilities = session.step(tensor, mask if t == 0 else None, is_last=t == len(frames) - 1)
        ids = session.labels(probabilities)
        _synchronize(device)
        seconds += time.perf_counter() - start
        labels[t] = ids.cpu().numpy()
    return labels, seconds


def evaluate(options: EvalOptions, notify: Callable[[str], None] = print) -> EvalReport:
    """Segment every sequence of ``options.data``, write PNGs and CSVs under ``options.out``."""
    from eamstcn.runtime.engines.factory import open_engines
    from eamstcn.runtime.session import DEFAULT_MAX_OBJECTS, Session

    problem = output_problem(options.out)  # before any sequence runs, not after all of them
    if problem is not None:
        raise EvalError(f"--out {options.out}: {problem}")
    resolution = _resolution(options.data, options.resolution)
    names = list(options.sequences) if options.sequences else list_sequences(options.data, resolution)
    known = set(list_sequences(options.data, resolution))
    missing = [n for n in names if n not in known]
    if missing:
        raise FileNotFoundError(f"sequences not in {options.data}: {', '.join(missing)}")
    engines = open_engines(options.engines, options.checkpoint, options.backend, options.device, options.precision, frame_size=options.size)
    notify(f"engines: {engines.describe()}")
    runs: list[SequenceRun] = []
    try:
        warmed = False
        for name in names:
            frames, masks = load_sequence(options.data, name, resolution)
            first = masks[0]
            if first is None:
                raise ValueError(f"{name}: the first frame has no annotation")
            objects = int(np.count_nonzero(np.unique(first)))
            limit = engines.manifest.max_objects or max(DEFAULT_MAX_OBJECTS, objects)
            if not warmed:
                padded = engines.manifest.padded_size or padded_size(*(options.size or frames.shape[1:3]), STRIDE)
                problem = options.memory.top_k_problem((padded[0] // STRIDE, padded[1] // STRIDE))
                if problem is not None:
                    raise EvalError(problem)
            session = Session(engines, options.memory, options.save, max_objects=limit)
            if not warmed:
                # One untimed pass over a few frames: first calls pay for allocations.
                _segment(session, frames[: min(3, len(frames))], first)
                session.reset()
                warmed = True
            predicted, seconds = _segment(session, frames, first)
            stems = [p.stem for p in frame_paths(options.data, name, resolution)]
            _write_masks(options.out / name, stems, predicted, runs)
            runs.append(SequenceRun(name, objects, len(frames), session.stored_frames, seconds))
            notify(f"{name}: {len(frames)} frames, {session.stored_frames} stored, {runs[-1].fps:.1f} FPS")
    finally:
        description = engines.describe()
        engines.close()
    result = evaluate_predictions(options.data, options.out, names, resolution)
    report = EvalReport(runs, result, description)
    try:
        report.write(options.out)
    except OSError as error:
        raise EvalError(f"writing the tables to {options.out} failed: {error.strerror or error} "
                        f"(the {len(runs)} sequences' masks are in {options.out})") from None
    return report


def _resolution(root: Path, resolution: str | None) -> str:
    """The DAVIS resolution folder, picked as ``eamstcn-train`` picks it."""
    if resolution is not None:
        return resolution
    from eamstcn.training.layouts import LayoutError, _resolution_folder  # standard library + davis_io only

    images, annotations = Path(root) / "JPEGImages", Path(root) / "Annotations"
    if not images.is_dir() or not annotations.is_dir():
        raise FileNotFoundError(f"not a DAVIS dataset: {images} or {annotations} is missing")
    try:
        return _resolution_folder(images, annotations, None) or "480p"
    except LayoutError as error:
        raise EvalError(str(error)) from None


def _write_masks(folder: Path, stems: list[str], predicted: np.ndarray, runs: list[SequenceRun]) -> None:
    """One sequence's palette PNGs (each atomic); a full disk is one line naming what is kept."""
    for stem, labels in zip(stems, predicted):
        try:
            write_indexed_png(folder / f"{stem}.png", labels)
        except OSError as error:
            done = ", ".join(run.name for run in runs) or "none"
            raise EvalError(f"writing {folder / stem}.png failed: {error.strerror or error} "
                            f"(sequences written in full: {done})") from None

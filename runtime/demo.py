"""``eamstcn-run --demo``: the whole job on a clip we generate, with the bundled model.

The clip comes from our own generator (:mod:`eamstcn.data.synth`, fixed seed: the same
frames on every machine; no third-party video ships with the package): a textured object
on a panning textured background, still and fast stretches, a change of scale and an
occluder that hides it for a few frames. Its first mask starts the run; the generator's
masks of the later frames score it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from eamstcn.default_model import BundledModelMissing, bundled_model
from eamstcn.notices import notice
from eamstcn.runtime.run_options import RunError, RunOptions, check_output
from eamstcn.runtime.runner import RunSummary, run

DEFAULT_DEMO_DIR = Path("eamstcn-demo")
DEMO_SEED = 20240
DEMO_FRAMES = 36
DEMO_SIZE = (128, 224)  # (H, W) for a model without its own frame size; multiples of 16, so nothing is padded
DEMO_OBJECTS = 1  # two objects of the generator are look-alikes that swap places: the known weak spot


@dataclass(frozen=True)
class DemoResult:
    summary: RunSummary
    output: Path
    #: Mean over objects of the mean IoU over frames 1..T-2 (DAVIS leaves out the first
    #: and the last frame) against the generator's masks.
    mean_iou: float
    model: str

    def lines(self) -> list[str]:
        s = self.summary
        return [
            f"demo: {s.frames} generated frames, {s.objects} object{'' if s.objects == 1 else 's'}, {s.fps:.1f} FPS ({self.model}); "
            f"mean IoU with the generator's true masks: {self.mean_iou:.2f}",
            f"backend: {s.backend}",
            f"wrote {self.output}/: masks/ (palette PNGs), overlay.mp4, stats.csv; the input is in {self.output}/input/",
        ]


def run_demo(
    output: Path = DEFAULT_DEMO_DIR,
    checkpoint: Path | None = None,
    engines: Path | None = None,
    backend: str = "auto",
    device: str | None = "cpu",
    notify: Callable[[str], None] = notice,
    progress: bool = True,
) -> DemoResult:
    """Generate the demo clip into ``output/input``, segment it from its first mask with
    the bundled model (or ``checkpoint``/``engines``) and write the run's outputs into
    ``output``. Raises the runner's user errors, one line each."""
    check_output(output)
    if checkpoint is None and engines is None:
        try:
            model = bundled_model()
        except BundledModelMissing:
            raise RunError(
                "--demo runs the bundled model, which is missing in this install; "
                "pass --checkpoint best.pth (or --engines DIR) to run the demo with yours"
            ) from None
        # The clip is generated at the model's own frame size (engines have a fixed one).
        notify(model.describe(with_size=False))
        size = model.frame_size or DEMO_SIZE
        checkpoint, engines, name = model.path, model.engines, f"bundled model {model.name}"
    else:
        name, size = str(checkpoint or engines), DEMO_SIZE

    from eamstcn.data.davis_io import write_frame, write_indexed_png
    from eamstcn.data.synth import generate_sequence

    clip = generate_sequence(DEMO_SEED, DEMO_FRAMES, *size, objects=DEMO_OBJECTS, name="eamstcn-demo")
    frames_dir = output / "input"
    existed = output.exists()
    try:
        try:
            for t, frame in enumerate(clip.frames):
                write_frame(frames_dir / f"{t:05d}.png", frame)
            write_indexed_png(output / "first_mask.png", clip.masks[0])
        except OSError as error:
            raise RunError(f"cannot write the demo to {output}: {error.strerror or error}") from None
        summary = run(
            RunOptions(
                mask=output / "first_mask.png", frames=frames_dir, checkpoint=checkpoint, engines=engines,
                backend=backend, device=device, output=output, progress=progress,
                frame_size=size,  # the clip's own size: generated at the scale the model knows
            ),
            notify=notify,
        )
    except Exception:  # a bad checkpoint, a missing backend: take back the clip written for it
        _remove_demo_input(output, existed)
        raise
    return DemoResult(summary, output, _mean_iou(output / "masks", clip.masks), name)


def _remove_demo_input(output: Path, existed: bool) -> None:
    """Remove what a failed demo wrote: the whole folder when it made it, else only the
    generated clip and its first mask (a run refused before its first frame wrote nothing else)."""
    import shutil

    if not existed:
        shutil.rmtree(output, ignore_errors=True)
        return
    shutil.rmtree(output / "input", ignore_errors=True)
    (output / "first_mask.png").unlink(missing_ok=True)


def _mean_iou(masks_dir: Path, truth: np.ndarray) -> float:
    """Mean over objects of the per-frame IoU over frames 1..T-2 (an object absent from
    both prediction and truth in a frame scores 1 there)."""
    from eamstcn.data.davis_io import read_mask

    frames = range(1, len(truth) - 1)
    predicted = {t: read_mask(masks_dir / f"{t:05d}.png") for t in frames if (masks_dir / f"{t:05d}.png").is_file()}
    objects = [int(v) for v in np.unique(truth[0]) if v]
    scores = []
    for object_id in objects:
        per_frame = []
        for t in frames:
            if t not in predicted:
                per_frame.append(0.0)
                continue
            a, b = predicted[t] == object_id, truth[t] == object_id
            union = np.logical_or(a, b).sum()
            per_frame.append(1.0 if union == 0 else float(np.logical_and(a, b).sum() / union))
        scores.append(float(np.mean(per_frame)) if per_frame else 0.0)
    return float(np.mean(scores)) if scores else 0.0

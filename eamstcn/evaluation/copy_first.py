"""The copy-the-first-mask baseline: every frame's prediction is frame 0's true mask.

What a tracker must beat to be tracking at all (an object that barely moves scores high
here). ``python -m eamstcn.evaluation.copy_first --data DIR [--sequences a,b]`` prints
J&F, J and F with the same DAVIS scoring as ``eamstcn-eval``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from eamstcn.data.davis_io import read_mask, write_indexed_png
from eamstcn.evaluation.davis_eval import EvalResult, evaluate_predictions


def copy_first_mask(data: Path, sequences: list[str] | None = None, resolution: str = "480p") -> EvalResult:
    """Score frame 0's annotation repeated over each sequence's annotated frames."""
    annotations = data / "Annotations" / resolution
    names = sequences or sorted(p.name for p in annotations.iterdir() if p.is_dir())
    with tempfile.TemporaryDirectory(prefix="eamstcn-copy-first-") as temp:
        for name in names:
            frames = sorted((annotations / name).glob("*.png"))
            first = read_mask(frames[0])
            first = (first > 0).astype("uint8") if first.max() == 255 else first  # DAVIS-2016: 0/255 is object 1
            for frame in frames:
                write_indexed_png(Path(temp) / name / frame.name, first)
        return evaluate_predictions(data, temp, names, resolution)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="DAVIS-layout folder")
    parser.add_argument("--sequences", help="comma-separated subset")
    parser.add_argument("--resolution", default="480p")
    args = parser.parse_args()
    result = copy_first_mask(args.data, args.sequences.split(",") if args.sequences else None, args.resolution)
    summary = result.summary()
    shown = {key: summary[key] for key in ("J&F-Mean", "J-Mean", "F-Mean")}
    print("copy the first mask: " + "  ".join(f"{key} {100 * value:.1f}" for key, value in shown.items()))


if __name__ == "__main__":
    main()

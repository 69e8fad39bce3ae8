"""What a failed or repeated run leaves behind (issue 20): a failed --demo takes back its
clip, a killed INT8 export's work files sit where the next export removes them, a reused
output folder holds only this run's masks, and a run without --output says it saves nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from eamstcn.data.davis_io import write_frame
from eamstcn.runtime.cli import app
from tests.helpers.assets import RuntimeAssets, write_mask
from tests.helpers.cli import assert_one_line_error


def invoke(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.mark.parametrize("existing", [False, True])
def test_a_failed_demo_takes_back_its_clip(tmp_path: Path, existing: bool) -> None:
    out = tmp_path / "demo"
    if existing:
        out.mkdir()
        (out / "mine.txt").write_text("kept")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    result = invoke("--demo", "--checkpoint", bad, "--output", out)
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    if existing:
        assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]
    else:
        assert not out.exists()


def test_int8_work_files_live_in_the_staging_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not /tmp/eamstcn-int8-*: a SIGKILLed export left 11 MB there that nothing removed."""
    pytest.importorskip("onnx")
    import eamstcn.export.quantize as quantize

    seen: list[Path] = []

    def stop(source: Path, destination: Path) -> Path:
        seen.append(destination.parent)
        raise quantize.QuantizeError("stop here")

    monkeypatch.setattr(quantize, "preprocess", stop)
    staging = tmp_path / ".engines.partial-1"
    staging.mkdir()
    with pytest.raises(quantize.QuantizeError):
        quantize.quantize_graph("decoder", staging / "decoder.onnx", staging / "decoder.int8.onnx", [{}], [], None)  # type: ignore[arg-type]
    assert seen and seen[0].parent == staging
    assert list(staging.iterdir()) == []  # removed on the way out


def test_a_reused_output_folder_holds_only_this_runs_masks(runtime_assets: RuntimeAssets, tmp_path: Path) -> None:
    from eamstcn.data.synth import generate_sequence

    clip = generate_sequence(seed=2, frames=6, height=64, width=64, objects=1)
    folder = tmp_path / "frames"
    for t, frame in enumerate(clip.frames):
        write_frame(folder / f"{t:05d}.png", frame)
    mask = write_mask(tmp_path / "m.png", clip.masks[0])
    out = tmp_path / "out"
    assert invoke("--frames", folder, "--mask", mask, "--engines", runtime_assets.engines, "--output", out).exit_code == 0
    (out / "masks" / "notes.png").write_bytes(b"the user's own file")
    result = invoke("--frames", folder, "--mask", mask, "--engines", runtime_assets.engines, "--output", out, "--max-frames", "3")
    assert result.exit_code == 0, result.output
    assert "removed its 6 masks" in result.stderr
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["00000.png", "00001.png", "00002.png", "notes.png"]
    assert len((out / "stats.csv").read_text().splitlines()) == 1 + 3


def test_a_run_without_output_says_it_saves_nothing(runtime_assets: RuntimeAssets, tmp_path: Path) -> None:
    from eamstcn.data.synth import generate_sequence

    clip = generate_sequence(seed=2, frames=3, height=64, width=64, objects=1)
    folder = tmp_path / "frames"
    for t, frame in enumerate(clip.frames):
        write_frame(folder / f"{t:05d}.png", frame)
    result = invoke("--frames", folder, "--mask", write_mask(tmp_path / "m.png", clip.masks[0]), "--engines", runtime_assets.engines)
    assert result.exit_code == 0, result.output
    assert "no --output: masks, overlay.mp4 and stats.csv are not saved" in result.stderr


def test_add_mask_beyond_max_frames_says_why(runtime_assets: RuntimeAssets, tmp_path: Path) -> None:
    mask = write_mask(tmp_path / "m.png", np.ones((64, 64), np.uint8))
    result = invoke("--frames", tmp_path, "--mask", mask, "--add-mask", f"50:{mask}", "--max-frames", "10",
                    "--engines", runtime_assets.engines, "--output", tmp_path / "out")
    assert_one_line_error(result, "--max-frames 10 ends the run at frame 9")
    assert not (tmp_path / "out").exists()


def test_a_video_of_1x1_frames_is_refused(runtime_assets: RuntimeAssets, tmp_path: Path) -> None:
    folder = tmp_path / "tiny"
    for t in range(3):
        write_frame(folder / f"{t:05d}.png", np.full((1, 1, 3), 128, np.uint8))
    result = invoke("--frames", folder, "--mask", write_mask(tmp_path / "m.png", np.ones((1, 1), np.uint8)),
                    "--engines", runtime_assets.engines, "--output", tmp_path / "out")
    assert_one_line_error(result, "frames are 1x1, too small to segment")
    assert not (tmp_path / "out").exists()


def test_255_exact_objects_are_not_called_anti_aliased(tmp_path: Path) -> None:
    from PIL import Image

    from eamstcn.data.davis_io import read_user_mask

    grid = np.zeros((15 * 8, 17 * 8), np.uint8)
    for n in range(255):
        i, j = divmod(n, 17)
        grid[i * 8 + 1:i * 8 + 7, j * 8 + 1:j * 8 + 7] = n + 1
    Image.fromarray(grid).save(tmp_path / "many.png")
    assert len(np.unique(read_user_mask(tmp_path / "many.png").ids)) == 256

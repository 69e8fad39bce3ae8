"""Synthetic annotated video: determinism, guaranteed events, dataset/video writing, CLI."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from eamstcn.data.davis_io import list_sequences, load_sequence
from eamstcn.data.synth import (
    SyntheticSequence,
    VideoWriteError,
    generate_dataset,
    generate_sequence,
    sequence_seed,
    write_video,
)
from eamstcn.cli_errors import size_option
from eamstcn.data.synth_cli import MAX_SIDE, MIN_SIDE, app, main

# Small but long enough for both the occlusion and the look-alike swap (T >= 20 keeps
# them disjoint by construction).
SMALL = {"frames": 20, "height": 64, "width": 96}


def _counts(clip: SyntheticSequence, object_id: int) -> np.ndarray:
    """Pixel count (T,) of one object per frame."""
    return (clip.masks == object_id).sum(axis=(1, 2))


def _centroid(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean()])


@pytest.fixture(scope="module")
def clip() -> SyntheticSequence:
    return generate_sequence(0, objects=2, **SMALL)


def test_shapes_dtypes_and_name(clip: SyntheticSequence) -> None:
    assert clip.frames.shape == (20, 64, 96, 3) and clip.frames.dtype == np.uint8
    assert clip.masks.shape == (20, 64, 96) and clip.masks.dtype == np.uint8
    assert clip.name == "synth-0"
    assert generate_sequence(0, frames=2, height=32, width=32, name="x").name == "x"


def test_same_seed_is_byte_identical_and_other_seeds_differ(clip: SyntheticSequence) -> None:
    again = generate_sequence(0, objects=2, **SMALL)
    assert again.frames.tobytes() == clip.frames.tobytes()
    assert again.masks.tobytes() == clip.masks.tobytes()
    other = generate_sequence(1, objects=2, **SMALL)
    assert not np.array_equal(other.frames, clip.frames)
    assert not np.array_equal(other.masks, clip.masks)


@pytest.mark.parametrize("objects", [1, 2, 3, 5])
def test_every_object_is_visible_in_frame_0(objects: int) -> None:
    for seed in range(3):
        clip = generate_sequence(seed, frames=3, height=64, width=96, objects=objects)
        assert set(np.unique(clip.masks[0]).tolist()) == set(range(objects + 1))
        assert int(clip.masks.max()) <= objects
        for k in range(1, objects + 1):
            assert (clip.masks[0] == k).sum() >= 10  # not a sliver


@pytest.mark.parametrize("seed", range(5))
def test_occluder_hides_the_last_object_completely_and_it_comes_back(seed: int) -> None:
    clip = generate_sequence(seed, objects=2, **SMALL)
    assert clip.occlusion is not None
    object_id, first, last = clip.occlusion
    assert object_id == 2 and 1 <= first <= last < 19
    counts = _counts(clip, object_id)
    assert counts[0] > 0
    assert (counts[first : last + 1] == 0).all()
    assert counts[last + 1 :].max() > 0.5 * counts[0]  # fully back once the occluder left
    assert counts[-1] > 0


def test_occlusion_exists_even_for_three_frames() -> None:
    clip = generate_sequence(7, frames=3, height=48, width=64, objects=1)
    assert clip.occlusion == (1, 1, 1)
    assert _counts(clip, 1).tolist()[1] == 0 and min(_counts(clip, 1)[[0, 2]]) > 0


@pytest.mark.parametrize("seed", range(3))
def test_look_alikes_cross_and_swap_places(seed: int) -> None:
    clip = generate_sequence(seed, objects=2, **SMALL)
    assert clip.swap is not None
    begin, end = clip.swap
    assert clip.occlusion is not None and begin > clip.occlusion[2]  # disjoint events
    one_start, two_start = _centroid(clip.masks[begin] == 1), _centroid(clip.masks[begin] == 2)
    one_end, two_end = _centroid(clip.masks[end] == 1), _centroid(clip.masks[end] == 2)
    apart = np.linalg.norm(one_start - two_start)
    assert apart > 0.25 * SMALL["width"]
    assert np.linalg.norm(one_end - two_start) < 0.25 * apart
    assert np.linalg.norm(two_end - one_start) < 0.25 * apart
    # Same texture family: their mean colours are much closer than to the background.
    frame = clip.frames[0].astype(float)
    colour = [frame[clip.masks[0] == k].mean(axis=0) for k in (0, 1, 2)]
    assert np.linalg.norm(colour[1] - colour[2]) < 0.5 * np.linalg.norm(colour[1] - colour[0])


def test_motion_has_still_and_fast_stretches_and_scale_change(clip: SyntheticSequence) -> None:
    # Seed 0 at this size: a still stretch early on, fast motion later (seed-specific).
    still = [t for t in range(19) if np.array_equal(clip.masks[t], clip.masks[t + 1])]
    assert len(still) >= 2
    steps = [
        np.linalg.norm(_centroid(clip.masks[t + 1] == 1) - _centroid(clip.masks[t] == 1))
        for t in range(19)
    ]
    assert max(steps) > 0.04 * SMALL["width"]
    area = _counts(clip, 1)
    assert area.max() > 1.2 * area.min()


def test_background_pans() -> None:
    clip = generate_sequence(2, frames=30, height=64, width=96, objects=1)
    background = clip.masks == 0
    first_bg = np.where(background[0] & background[-1])
    # Pure sensor noise would differ by ~2 gray levels; a pan changes the texture under pixels.
    diff = np.abs(clip.frames[0].astype(int) - clip.frames[-1].astype(int))[first_bg].mean()
    assert diff > 4


def test_generation_is_fast() -> None:
    start = time.perf_counter()
    generate_sequence(3, frames=30, height=96, width=160, objects=2)
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize(
    "kwargs",
    [{"seed": -1}, {"frames": 0}, {"height": 16}, {"width": 8}, {"objects": 0}],
)
def test_bad_arguments_raise_value_error(kwargs: dict[str, int]) -> None:
    arguments = {"seed": 0, "frames": 3, "height": 64, "width": 64, "objects": 1, **kwargs}
    with pytest.raises(ValueError):
        generate_sequence(**arguments)


# --------------------------------------------------------------------------- output


def test_generated_dataset_loads_back_with_identical_masks(tmp_path: Path) -> None:
    names = generate_dataset(tmp_path, sequences=2, frames=5, height=64, width=96, objects=2, seed=3)
    assert names == ["synth-3-000", "synth-3-001"]
    assert list_sequences(tmp_path) == names
    for index, name in enumerate(names):
        expected = generate_sequence(sequence_seed(3, index), 5, 64, 96, 2, name=name)
        frames, masks = load_sequence(tmp_path, name)
        np.testing.assert_array_equal(np.stack(masks), expected.masks)
        assert set(np.unique(masks[0]).tolist()) == {0, 1, 2}
        assert np.abs(frames.astype(int) - expected.frames).mean() < 6  # JPEG q95
        with Image.open(tmp_path / "Annotations" / "480p" / name / "00000.png") as png:
            assert png.mode == "P"
    assert sequence_seed(3, 0) != sequence_seed(3, 1) != sequence_seed(4, 0)


def test_regenerating_shorter_sequences_removes_stale_frames(tmp_path: Path) -> None:
    generate_dataset(tmp_path, sequences=1, frames=5, height=32, width=32, objects=1, seed=0)
    generate_dataset(tmp_path, sequences=1, frames=3, height=32, width=32, objects=1, seed=0)
    frames, masks = load_sequence(tmp_path, "synth-0-000")
    assert len(frames) == len(masks) == 3


def test_write_video_reads_back_with_the_right_frame_count(tmp_path: Path) -> None:
    clip = generate_sequence(1, frames=7, height=64, width=96, objects=1)
    path = write_video(tmp_path / "clip.mp4", clip.frames, fps=12)
    assert path == tmp_path / "clip.mp4" and sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]
    capture = cv2.VideoCapture(str(path))
    read = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        read.append(frame)
    capture.release()
    assert len(read) == 7 and read[0].shape == (64, 96, 3)
    assert np.abs(read[3][..., ::-1].astype(int) - clip.frames[3]).mean() < 20  # lossy codec


def test_write_video_errors_are_clear(tmp_path: Path) -> None:
    frames = np.zeros((2, 32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match="even"):
        write_video(tmp_path / "odd.mp4", np.zeros((2, 33, 32, 3), np.uint8))
    with pytest.raises(VideoWriteError, match="cannot write video"):
        write_video(tmp_path / "clip.notavideo", frames)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- CLI


def test_parse_size() -> None:
    """--size as eamstcn-synth reads it: HEIGHTxWIDTH only (no 16:9 short side), 32..4096."""
    def parse_size(text: str) -> tuple[int, int] | None:
        return size_option(text, "--size", MIN_SIDE, MAX_SIDE, short_side=False)

    assert parse_size("96x160") == (96, 160)
    assert parse_size(" 64 X 128 ") == (64, 128)
    for bad in ("96", "x", "96x", "12x12", "96x160x3", "-96x160"):
        with pytest.raises(typer.BadParameter, match="HEIGHTxWIDTH|each side"):
            parse_size(bad)


def test_cli_writes_a_dataset(tmp_path: Path) -> None:
    out = tmp_path / "synth"
    args = ["--out", str(out), "--sequences", "2", "--frames", "4", "--size", "64x96",
            "--objects", "2", "--seed", "5", "--no-progress", "--video"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1].startswith("Wrote 2 sequences")
    assert list_sequences(out) == ["synth-5-000", "synth-5-001"]
    assert sorted(p.name for p in (out / "videos").iterdir()) == ["synth-5-000.mp4", "synth-5-001.mp4"]
    frames, masks = load_sequence(out, "synth-5-001")
    assert frames.shape == (4, 64, 96, 3) and len(masks) == 4


def _main(args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """eamstcn-synth as the console script runs it (run_app: usage errors are one line)."""
    monkeypatch.setattr("sys.argv", ["eamstcn-synth", *args])
    with pytest.raises(SystemExit) as info:
        main()
    captured = capsys.readouterr()
    return info.value.code, captured.out + captured.err


@pytest.mark.parametrize("size", ["abc", "96", "10x10", "64x"])
def test_cli_bad_size_is_one_line_and_non_zero(tmp_path: Path, size: str, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    code, output = _main(["--out", str(tmp_path / "o"), "--size", size], monkeypatch, capsys)
    assert code == 2
    lines = output.strip().splitlines()
    assert len(lines) == 1 and "--size" in lines[0], output
    assert "Traceback" not in output
    assert not (tmp_path / "o").exists()


def test_cli_other_usage_errors_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    for args in ([], ["--out", str(tmp_path), "--frames", "0"], ["--out", str(tmp_path), "--nope"]):
        code, output = _main(args, monkeypatch, capsys)
        assert code == 2
        assert len(output.strip().splitlines()) == 1, output


def test_cli_help_mentions_the_options() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for option in ("--out", "--sequences", "--frames", "--size", "--objects", "--seed"):
        assert option in result.output


def test_main_entry_point_exits_non_zero_on_bad_size(monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("sys.argv", ["eamstcn-synth", "--out", "x", "--size", "big"])
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == 2
    assert capsys.readouterr().err.strip().count("\n") == 0

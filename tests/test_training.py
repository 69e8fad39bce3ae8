"""Training: layouts, samples, schedules, the tiny presets, exact resume, torchrun DDP."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from eamstcn.checkpoint import load_checkpoint
from eamstcn.data.davis_io import write_frame, write_indexed_png
from eamstcn.data.synth import generate_dataset
from eamstcn.network import EamStcn
from eamstcn.training.cli import app
from eamstcn.training.config import BootstrapSchedule, GapCurriculum, preset
from eamstcn.training.datasets import StillClips, VideoClips, choose_frames
from eamstcn.training.layouts import LayoutError, find_stills, find_videos
from eamstcn.training.loss import bootstrap_fraction, bootstrapped_cross_entropy, soft_dice_loss
from eamstcn.training.trainer import lr_factor, train

DAVIS2016 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "davis2016"


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    generate_dataset(root, sequences=2, frames=8, height=64, width=64, objects=2, seed=3)
    return root


def _tiny(phase: str, **changes):
    """The tiny preset shrunk further for unit tests: 64x64 crops, batch 2."""
    config = preset("tiny", phase)  # type: ignore[arg-type]
    defaults = dict(crop=(64, 64), batch_size=2, iterations=4, warmup=0, log_every=1, checkpoint_every=2,
                    val_every=1000, bootstrap=BootstrapSchedule(start=2, end=4, final_p=0.5))
    return replace(config, **{**defaults, **changes})


def _write_davis2016(root: Path, frames: int = 5, size: tuple[int, int] = (48, 64)) -> None:
    """DAVIS-2016 style: one object, masks stored as 8-bit grayscale 0/255."""
    rng = np.random.default_rng(0)
    for t in range(frames):
        image = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
        write_frame(root / "JPEGImages" / "480p" / "blob" / f"{t:05d}.jpg", image)
        mask = np.zeros(size, dtype=np.uint8)
        mask[10 + t : 30 + t, 10:40] = 255
        path = root / "Annotations" / "480p" / "blob" / f"{t:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask, mode="L").save(path)


def _write_youtube(root: Path) -> None:
    """YouTube-VOS 2018 train style: no resolution folder, frames numbered every 5."""
    rng = np.random.default_rng(1)
    for t in range(0, 40, 5):
        write_frame(root / "train" / "JPEGImages" / "vid" / f"{t:05d}.jpg", rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
        ids = np.zeros((48, 64), dtype=np.uint8)
        ids[5:25, 5:25], ids[20:40, 30:60] = 1, 3
        write_indexed_png(root / "train" / "Annotations" / "vid" / f"{t:05d}.png", ids)


# ----------------------------------------------------------------------------- data


def test_davis2017_layout_loads_palette_objects(synth_root: Path) -> None:
    videos = find_videos(synth_root)
    assert [v.name for v in videos] == ["synth-3-000", "synth-3-001"]
    assert all(v.stride == 1 and len(v.annotated) == 8 for v in videos)
    clips = VideoClips(videos, (64, 64), seed=0, max_gap_at=lambda i: 3)
    sample = clips[0]
    assert sample["frames"].shape == (3, 3, 64, 64)
    assert sample["first_masks"].shape == (2, 64, 64) and sample["labels"].shape == (3, 64, 64)
    assert sample["labels"].max() <= 2
    for k in range(2):  # an object's first mask is exactly its label in frame 0
        if sample["selector"][k]:
            assert torch.equal(sample["first_masks"][k].bool(), sample["labels"][0] == k + 1)
    # Samples are a pure function of (seed, rank, index): what makes resume exact.
    again = clips[0]
    assert all(torch.equal(sample[k], again[k]) for k in sample)


def test_davis2016_layout_binary_masks(tmp_path: Path) -> None:
    _write_davis2016(tmp_path)
    (video,) = find_videos(tmp_path)
    sample = VideoClips([video], (32, 48), seed=1, max_gap_at=lambda i: 2, max_objects=2)[0]
    assert sample["selector"].tolist() == [1.0, 0.0]  # one object: 255 -> id 1, slot 2 padding
    assert set(sample["labels"].unique().tolist()) <= {0, 1}
    assert len(find_stills(tmp_path)) == 5


@pytest.mark.skipif(not DAVIS2016.is_dir(), reason="../shared/data/davis2016 not present")
def test_real_davis2016_folder_loads() -> None:
    videos = find_videos(DAVIS2016)
    assert len(videos) == 10 and all(len(v.annotated) == len(v.frames) for v in videos)
    sample = VideoClips(videos, (64, 96), seed=0, max_gap_at=lambda i: 5)[3]
    assert sample["frames"].shape == (3, 3, 64, 96)


def test_youtube_layout_uses_frame_stride(tmp_path: Path) -> None:
    _write_youtube(tmp_path)
    (video,) = find_videos(tmp_path)
    assert video.stride == 5 and len(video.annotated) == 8
    sample = VideoClips([video], (32, 48), seed=0, max_gap_at=lambda i: 10)[0]
    assert sample["labels"].max() <= 2  # ids {1, 3} are renumbered to 1..2


def test_stills_folder_and_faux_videos(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    for i in range(3):
        write_frame(tmp_path / "images" / f"im{i}.jpg", rng.integers(0, 255, (60, 80, 3), dtype=np.uint8))
        ids = np.zeros((60, 80), dtype=np.uint8)
        ids[10:40, 20:60] = 1
        write_indexed_png(tmp_path / "masks" / f"im{i}.png", ids)
    pairs = find_stills(tmp_path)
    assert len(pairs) == 3
    sample = StillClips(pairs, (48, 64), seed=0)[5]
    labels = sample["labels"]
    assert labels.shape == (3, 48, 64)
    # Per-frame warps: the three frames of a faux video differ.
    assert not torch.equal(labels[0], labels[1]) or not torch.equal(sample["frames"][0], sample["frames"][1])


def test_layout_error_is_clear(tmp_path: Path) -> None:
    with pytest.raises(LayoutError, match="JPEGImages"):
        find_videos(tmp_path)


def test_choose_frames_respects_gap_and_order() -> None:
    rng = np.random.default_rng(0)
    for gap in (1, 3, 25):
        for _ in range(200):
            a, b, c = choose_frames(rng, 30, gap)
            assert 0 <= a < b < c < 30 and b - a <= gap and c - b <= gap
    assert choose_frames(rng, 3, 25) == [0, 1, 2]


def test_gap_curriculum_and_bootstrap_schedule() -> None:
    gaps = GapCurriculum()
    assert [gaps.max_gap(s, 100) for s in (0, 10, 20, 30, 40, 89, 90, 99)] == [5, 10, 15, 20, 25, 25, 5, 5]
    schedule = BootstrapSchedule(start=10, end=20, final_p=0.2)
    assert bootstrap_fraction(5, schedule) == 1.0
    assert bootstrap_fraction(15, schedule) == pytest.approx(0.6)
    assert bootstrap_fraction(50, schedule) == pytest.approx(0.2)
    logits = torch.randn(2, 3, 8, 8)
    labels = torch.randint(0, 3, (2, 8, 8))
    plain = torch.nn.functional.cross_entropy(logits, labels)
    assert bootstrapped_cross_entropy(logits, labels, 1.0) == pytest.approx(float(plain))
    assert bootstrapped_cross_entropy(logits, labels, 0.25) >= plain  # the hardest quarter


def test_soft_dice_scores_small_objects_and_skips_padding() -> None:
    labels = torch.zeros(1, 32, 32, dtype=torch.long)
    labels[0, :16] = 1  # a large object
    labels[0, 20:22, 20:22] = 2  # a 4-pixel object

    def confident(pred: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.one_hot(pred, 3).permute(0, 3, 1, 2).float() * 40.0 - 20.0

    both = torch.ones(1, 2)
    assert float(soft_dice_loss(confident(labels), labels, both)) == pytest.approx(0.0, abs=1e-6)
    missed_small = labels.clone()
    missed_small[labels == 2] = 0
    # Missing 4 of 1024 pixels barely moves CE but costs the small object its whole Dice.
    assert float(soft_dice_loss(confident(missed_small), labels, both)) == pytest.approx(0.5 * 4 / 5, abs=1e-3)
    assert float(torch.nn.functional.cross_entropy(confident(missed_small), labels)) < 0.2
    # A padding object (selector 0) is left out of the mean.
    only_first = torch.tensor([[1.0, 0.0]])
    assert float(soft_dice_loss(confident(missed_small), labels, only_first)) == pytest.approx(0.0, abs=1e-6)


def test_lr_schedule_decays() -> None:
    config = replace(preset("tiny", "phase1"), iterations=100, warmup=10)
    assert lr_factor(0, config) == pytest.approx(0.1)
    assert lr_factor(10, config) > lr_factor(60, config) > lr_factor(99, config) > 0


# ----------------------------------------------------------------------------- training


def test_tiny_phase1_then_phase2_loss_falls(synth_root: Path, tmp_path: Path) -> None:
    torch.set_num_threads(2)
    first = train(_tiny("phase1", iterations=24, checkpoint_every=24, lr=2e-3), synth_root, tmp_path / "p1",
                  progress=False)
    assert np.mean(first.losses[-6:]) < np.mean(first.losses[:6])
    assert (tmp_path / "p1" / "latest.pth").is_file()
    second = train(_tiny("phase2", iterations=6, lr=1e-3), synth_root, tmp_path / "p2",
                   init=tmp_path / "p1" / "latest.pth", val=synth_root, progress=False)
    assert second.step == 6
    assert (tmp_path / "p2" / "best.pth").is_file()  # validated at the last step
    # Continuing from phase 1 starts where it ended, not from a random network.
    assert second.losses[0] < first.losses[0]
    state = load_checkpoint(tmp_path / "p2" / "latest.pth").training
    assert state is not None and state["step"] == 6 and state["best_jf"] is not None


def test_resume_continues_with_the_same_next_loss(synth_root: Path, tmp_path: Path) -> None:
    torch.set_num_threads(2)
    config = _tiny("phase2")
    full = train(config, synth_root, tmp_path / "full", progress=False)
    partial = train(config, synth_root, tmp_path / "part", progress=False, stop_at=2)
    assert partial.step == 2 and partial.losses == full.losses[:2]
    resumed = train(config, synth_root, tmp_path / "part", resume=tmp_path / "part" / "latest.pth", progress=False)
    assert resumed.step == 4
    assert resumed.losses == full.losses[2:]  # bit-identical: same step, same next loss
    final_full = load_checkpoint(tmp_path / "full" / "latest.pth").weights
    final_resumed = load_checkpoint(tmp_path / "part" / "latest.pth").weights
    assert all(torch.equal(final_full[k], final_resumed[k]) for k in final_full)


_DDP_SCRIPT = textwrap.dedent(
    """
    import os, sys
    from dataclasses import replace
    import torch
    from eamstcn.training.config import BootstrapSchedule, preset
    from eamstcn.training.trainer import train

    data, out, weights = sys.argv[1:4]
    config = replace(preset("tiny", "phase2"), crop=(64, 64), batch_size=1, iterations=2, warmup=0,
                     checkpoint_every=2, bootstrap=BootstrapSchedule(1, 2, 0.5))
    result = train(config, data, out, device="cpu", progress=False)
    # Parameters only: BN running statistics are per-rank until DDP re-broadcasts rank 0's.
    torch.save({k: v.detach().clone() for k, v in result.network.named_parameters()},
               os.path.join(weights, f"rank{os.environ['RANK']}.pt"))
    """
)


def test_torchrun_two_cpu_processes_stay_in_sync(synth_root: Path, tmp_path: Path) -> None:
    script = tmp_path / "ddp_train.py"
    script.write_text(_DDP_SCRIPT)
    out, weights = tmp_path / "out", tmp_path / "weights"
    weights.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(script), str(synth_root), str(out), str(weights)]
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert completed.returncode == 0, completed.stderr[-3000:]
    rank0, rank1 = (torch.load(weights / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)  # gradients were averaged
    torch.manual_seed(0)  # the trainer's initial weights (seed 0)
    initial = EamStcn(preset("tiny", "phase2").model).state_dict()
    assert any(not torch.equal(initial[k], rank0[k]) for k in rank0)  # and they did train
    written = load_checkpoint(out / "latest.pth").weights
    assert all(torch.equal(rank0[k], written[k]) for k in rank0)
    assert sorted(p.name for p in out.iterdir()) == ["latest.pth", "log.jsonl"]  # rank 0 alone wrote
    state = load_checkpoint(out / "latest.pth").training
    assert state["world_size"] == 2 and len(state["rng"]) == 2


# ----------------------------------------------------------------------------- CLI


def test_cli_help_and_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["phase2", "--help"])
    assert result.exit_code == 0 and "--preset" in result.output and "--init" in result.output
    result = runner.invoke(app, ["phase1", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert result.exit_code != 0 and "not found" in result.output
    result = runner.invoke(app, ["phase1", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--preset", "huge"])
    assert result.exit_code != 0 and "unknown preset" in result.output
    result = runner.invoke(app, ["phase2", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--preset", "tiny"])
    assert result.exit_code == 2 and "JPEGImages" in result.output


def test_cli_runs_tiny_phase2(synth_root: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["phase2", "--data", str(synth_root), "--out", str(tmp_path), "--preset", "tiny",
                                      "--iterations", "2", "--batch-size", "1", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "finished at step 2" in result.output and (tmp_path / "latest.pth").is_file()

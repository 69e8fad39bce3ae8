"""Training data sources (resolution folders, several roots, held-out sequences) and the
original's training-time layer settings (BatchNorm eps/momentum, stochastic depth)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from eamstcn.checkpoint import load_checkpoint, save_checkpoint, build_model
from eamstcn.config import TINY, ModelConfig
from eamstcn.data.davis_io import write_frame, write_indexed_png
from eamstcn.data.synth import generate_dataset
from eamstcn.network import EamStcn
from eamstcn.training.cli import app
from eamstcn.training.config import BootstrapSchedule, preset
from eamstcn.training.datasets import VideoClips
from eamstcn.training.layouts import LayoutError, find_all_videos, find_videos, resolution_of
from eamstcn.training.regularisation import apply_regularisation, trunk_blocks
from eamstcn.training.trainer import DataSources, train

DAVIS_240P = Path(__file__).resolve().parents[2] / "shared" / "data" / "davis2016-train-240p"


def _write_davis(root: Path, names: tuple[str, ...], resolution: str, frames: int = 5) -> None:
    rng = np.random.default_rng(0)
    for name in names:
        for t in range(frames):
            write_frame(root / "JPEGImages" / resolution / name / f"{t:05d}.jpg",
                        rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
            ids = np.zeros((48, 64), dtype=np.uint8)
            ids[10 + t : 30 + t, 10:40] = 1
            write_indexed_png(root / "Annotations" / resolution / name / f"{t:05d}.png", ids)


def test_a_single_resolution_folder_is_found(tmp_path: Path) -> None:
    _write_davis(tmp_path, ("a", "b"), "240p")
    assert resolution_of(tmp_path) == "240p"
    assert [v.name for v in find_videos(tmp_path)] == ["a", "b"]
    assert [v.name for v in find_videos(tmp_path, "240p")] == ["a", "b"]
    with pytest.raises(LayoutError, match=r"no resolution folder '480p'.*found: 240p"):
        find_videos(tmp_path, "480p")


def test_480p_wins_when_several_resolutions_exist(tmp_path: Path) -> None:
    _write_davis(tmp_path, ("low",), "240p")
    _write_davis(tmp_path, ("high",), "480p")
    assert [v.name for v in find_videos(tmp_path)] == ["high"]
    assert [v.name for v in find_videos(tmp_path, "240p")] == ["low"]


def test_held_out_sequences_are_left_out_and_must_exist(tmp_path: Path) -> None:
    _write_davis(tmp_path / "real", ("a", "b", "c"), "240p")
    generate_dataset(tmp_path / "synth", sequences=2, frames=6, height=48, width=64, objects=1, seed=1)
    videos = find_all_videos([tmp_path / "real", tmp_path / "synth"], exclude=("b",))
    assert [(v.name, v.source) for v in videos] == [("a", 0), ("c", 0), ("synth-1-000", 1), ("synth-1-001", 1)]
    with pytest.raises(LayoutError, match="held-out sequence.*nope"):
        find_all_videos([tmp_path / "real"], exclude=("nope",))


def test_each_source_gets_an_equal_share_of_samples(tmp_path: Path) -> None:
    _write_davis(tmp_path / "real", ("a",), "240p")
    generate_dataset(tmp_path / "synth", sequences=6, frames=6, height=48, width=64, objects=1, seed=1)
    videos = find_all_videos([tmp_path / "real", tmp_path / "synth"])
    clips = VideoClips(videos, (32, 48), seed=0, max_gap_at=lambda i: 1)
    assert clips._weights is not None and clips._weights.sum() == pytest.approx(1.0)
    picks = [clips.videos[int(np.random.default_rng(i).choice(len(videos), p=clips._weights))].source
             for i in range(400)]
    assert 0.4 < picks.count(0) / len(picks) < 0.6  # 1 real video vs 6 generated: half the samples each


@pytest.mark.skipif(not DAVIS_240P.is_dir(), reason="../shared/data/davis2016-train-240p not present")
def test_real_240p_training_folder_is_found() -> None:
    videos = find_videos(DAVIS_240P)
    assert len(videos) == 30 and resolution_of(DAVIS_240P) == "240p"


def test_train_cli_mixes_folders_and_validates_on_held_out(tmp_path: Path) -> None:
    _write_davis(tmp_path / "real", ("a", "b"), "240p", frames=6)
    generate_dataset(tmp_path / "synth", sequences=2, frames=6, height=48, width=64, objects=1, seed=1)
    result = CliRunner().invoke(app, [
        "phase2", "--data", str(tmp_path / "real"), "--data", str(tmp_path / "synth"), "--hold-out", "b",
        "--out", str(tmp_path / "run"), "--preset", "tiny", "--iterations", "2", "--crop", "32x48",
        "--batch-size", "1", "--val-every", "2", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "best validation J&F" in result.output
    metadata = load_checkpoint(tmp_path / "run" / "best.pth").metadata
    assert metadata["hold_out"] == ["b"] and len(metadata["data"]) == 2
    missing = CliRunner().invoke(app, ["phase2", "--data", str(tmp_path / "real"), "--hold-out", "zzz",
                                       "--out", str(tmp_path / "run2"), "--preset", "tiny", "--quiet"])
    assert missing.exit_code == 2 and "held-out sequence(s) not found in the training data: zzz" in missing.output


# --------------------------------------------------------------------- BatchNorm, drop path


def _expansion_bns(model: EamStcn) -> list[torch.nn.BatchNorm2d]:
    return [m for m in model.expansion.modules() if isinstance(m, torch.nn.BatchNorm2d)]


def test_expansion_batchnorm_eps_is_the_originals() -> None:
    model = EamStcn(TINY)
    assert [bn.eps for bn in _expansion_bns(model)] == [1e-3] * 3
    # The trunks (timm, tf_ variants) use 1e-3 too: the whole network agrees.
    assert {m.eps for m in model.key_trunk.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {1e-3}


def test_checkpoints_written_before_the_eps_field_keep_their_outputs(tmp_path: Path) -> None:
    torch.manual_seed(0)
    old = EamStcn(replace(TINY, expansion_bn_eps=1e-5)).eval()
    with torch.no_grad():  # small running variances, as trained networks have: eps matters
        for bn in _expansion_bns(old):
            bn.running_var.uniform_(1e-4, 1e-3)
    save_checkpoint(tmp_path / "old.pth", old)
    payload = torch.load(tmp_path / "old.pth", weights_only=True)
    del payload["model_config"]["expansion_bn_eps"]  # as written before the field existed
    torch.save(payload, tmp_path / "old.pth")

    loaded = load_checkpoint(tmp_path / "old.pth")
    assert loaded.config.expansion_bn_eps == 1e-5
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = old.encode_key(image)[1]
        assert torch.equal(build_model(loaded).encode_key(image)[1], expected)
        # With today's eps the same weights give clearly different features.
        today = EamStcn(TINY).eval()
        today.load_state_dict(old.state_dict())
        assert (today.encode_key(image)[1] - expected).abs().max() > 0.1 * expected.abs().max()
    assert ModelConfig.from_dict({}).expansion_bn_eps == 1e-3


def test_reference_preset_trains_as_the_original() -> None:
    config = preset("reference", "phase2")
    assert (config.bn_momentum, config.drop_path, config.expansion_drop_path) == (0.01, 0.2, 0.2)
    assert not config.freeze_bn  # the original trains its BatchNorms (momentum 0.01)
    tiny = preset("tiny", "phase2")
    assert (tiny.bn_momentum, tiny.drop_path) == (0.1, 0.0)
    with pytest.raises(ValueError, match="drop_path"):
        replace(config, drop_path=1.0)


def test_regularisation_sets_momentum_and_linear_drop_path() -> None:
    model = EamStcn(TINY)
    apply_regularisation(model, bn_momentum=0.01, drop_path=0.2, expansion_drop_path=0.2)
    assert {m.momentum for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)} == {0.01}
    blocks = trunk_blocks(model.key_trunk)
    rates = [getattr(b.drop_path, "drop_prob", 0.0) for b in blocks]
    assert rates == pytest.approx([0.2 * i / len(blocks) for i in range(len(blocks))])
    assert model.expansion.drop_path == 0.2
    # Stochastic in training, identity in eval.
    image = torch.randn(2, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model.encode_key(image)[1], model.encode_key(image)[1])
    model.train()
    torch.manual_seed(0)
    with torch.no_grad():
        first = model.encode_key(image)[1]
        second = model.encode_key(image)[1]
    assert not torch.equal(first, second)


def test_training_records_its_regularisation(tmp_path: Path) -> None:
    generate_dataset(tmp_path / "synth", sequences=2, frames=6, height=48, width=64, objects=1, seed=1)
    config = replace(preset("tiny", "phase2"), crop=(32, 48), batch_size=1, iterations=1, warmup=0,
                     checkpoint_every=1, bootstrap=BootstrapSchedule(start=1, end=1, final_p=1.0),
                     bn_momentum=0.05, drop_path=0.1, expansion_drop_path=0.1)
    train(config, [tmp_path / "synth"], tmp_path / "run", progress=False, sources=DataSources())
    recorded = load_checkpoint(tmp_path / "run" / "latest.pth").metadata["train_config"]
    assert (recorded["bn_momentum"], recorded["drop_path"], recorded["expansion_drop_path"]) == (0.05, 0.1, 0.1)

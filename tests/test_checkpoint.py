"""Checkpoint format: exact round trip and one clear error per bad file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from eamstcn.checkpoint import FORMAT_TAG, CheckpointError, load_checkpoint, save_checkpoint
from eamstcn.config import TINY, ModelConfig
from eamstcn.network import EamStcn
from tests.helpers.models import load_model, network_outputs


@pytest.fixture(scope="module")
def tiny_model() -> EamStcn:
    torch.manual_seed(0)
    return EamStcn(TINY).eval()


def test_round_trip_reproduces_outputs_exactly(tiny_model: EamStcn, tmp_path: Path) -> None:
    path = tmp_path / "model.pth"
    save_checkpoint(path, tiny_model, training={"step": 12, "rng": torch.get_rng_state()}, metadata={"note": "x"})
    checkpoint = load_checkpoint(path)
    assert checkpoint.config == TINY
    assert checkpoint.training is not None and checkpoint.training["step"] == 12
    restored = load_model(path)
    for before, after in zip(network_outputs(tiny_model), network_outputs(restored), strict=True):
        assert torch.equal(before, after)


def test_save_is_atomic_and_leaves_no_temp_files(tiny_model: EamStcn, tmp_path: Path) -> None:
    path = tmp_path / "sub" / "model.pth"
    save_checkpoint(path, tiny_model)
    save_checkpoint(path, tiny_model)  # overwrite in place
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.pth"]


class _Pickled:
    pass


def _write_bad_files(tmp_path: Path, model: EamStcn) -> dict[str, Path]:
    files = {
        "junk": tmp_path / "junk.pth",
        "pickled": tmp_path / "pickled.pth",
        "foreign": tmp_path / "foreign.pth",
        "version": tmp_path / "version.pth",
        "mismatch": tmp_path / "mismatch.pth",
        "folder": tmp_path / "folder.pth",
    }
    files["junk"].write_bytes(b"\x00\x01 this is not a checkpoint" * 40)
    torch.save({"model": _Pickled()}, files["pickled"])
    torch.save(model.state_dict(), files["foreign"])  # a bare state dict: not ours
    torch.save({"format": FORMAT_TAG, "version": 99}, files["version"])
    other = EamStcn(ModelConfig(key_backbone="tf_efficientnetv2_b0", value_backbone="tf_efficientnetv2_b0", value_dim=64))
    torch.save(
        {"format": FORMAT_TAG, "version": 1, "model_config": TINY.to_dict(), "weights": other.state_dict()},
        files["mismatch"],
    )
    files["folder"].mkdir()
    return files


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", "checkpoint not found"),
        ("junk", "is not a PyTorch checkpoint file"),
        ("pickled", "pickled Python objects"),
        ("foreign", "is not an EamStcn checkpoint"),
        ("version", "version 99"),
        ("mismatch", "shape mismatch at \\['expansion"),
        ("folder", "not a file"),
    ],
)
def test_bad_checkpoints_give_one_clear_line(tiny_model: EamStcn, tmp_path: Path, case: str, message: str) -> None:
    files = _write_bad_files(tmp_path, tiny_model)
    path = files.get(case, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match=message) as caught:
        load_model(path)
    assert "\n" not in str(caught.value)

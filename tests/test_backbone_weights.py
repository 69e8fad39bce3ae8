"""Loading ImageNet trunk weights from a local timm state dict (no downloads)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from eamstcn.config import ModelConfig
from eamstcn.network import EamStcn
from eamstcn.network.backbone import BackboneError

B0 = "tf_efficientnetv2_b0"


def _timm_state_file(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    import timm

    torch.manual_seed(3)
    full = timm.create_model(B0, pretrained=False, pad_type="")  # with head and stride-32 stage
    state = full.state_dict()
    path = tmp_path / "b0.pth"
    torch.save(state, path)
    return path, state


def test_load_into_both_trunks(tmp_path: Path) -> None:
    path, state = _timm_state_file(tmp_path)
    model = EamStcn(ModelConfig(key_backbone=B0, value_backbone=B0, value_dim=64))
    model.load_backbone_weights(path, path)
    trunk_state = model.key_trunk.state_dict()
    assert all(torch.equal(trunk_state[key], state[key]) for key in trunk_state)
    stem = model.value_trunk.conv_stem.weight
    assert torch.equal(stem[:, :3], state["conv_stem.weight"])
    assert torch.count_nonzero(stem[:, 3:]) == 0  # mask channels start neutral


def test_bad_weight_files(tmp_path: Path) -> None:
    model = EamStcn(ModelConfig(key_backbone=B0, value_backbone=B0, value_dim=64))
    with pytest.raises(BackboneError, match="not found"):
        model.load_backbone_weights(tmp_path / "missing.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a state dict")
    with pytest.raises(BackboneError, match="cannot read"):
        model.load_backbone_weights(junk)
    other = tmp_path / "other.pth"
    torch.save({"conv_stem.weight": torch.zeros(8, 3, 3, 3)}, other)
    with pytest.raises(BackboneError, match="shape mismatch"):
        model.load_backbone_weights(other)

"""The EamStcn network: shapes, parameter count, stateless engine methods."""

from __future__ import annotations

import pytest
import torch

from eamstcn.config import ModelConfig
from eamstcn.network import EamStcn, others_from_masks

B0, B1 = "tf_efficientnetv2_b0", "tf_efficientnetv2_b1"


@pytest.fixture(scope="module", params=[(B0, B0), (B1, B1), (B0, B1)], ids=["b0-b0", "b1-b1", "b0key-b1value"])
def model(request: pytest.FixtureRequest) -> EamStcn:
    key_backbone, value_backbone = request.param
    # A narrow value_dim keeps CPU time low; the trunks are the real ones.
    torch.manual_seed(0)
    return EamStcn(ModelConfig(key_backbone=key_backbone, value_backbone=value_backbone, value_dim=64)).eval()


@pytest.mark.parametrize("size", [(64, 64), (96, 128)])
@pytest.mark.parametrize("num_objects", [1, 3])
@torch.no_grad()
def test_engine_methods_shapes(model: EamStcn, size: tuple[int, int], num_objects: int) -> None:
    height, width = size
    h, w = height // 16, width // 16
    cfg = model.config
    key_channels = model.key_trunk.channels
    image = torch.randn(1, 3, height, width)

    key, f16x, f8, f4 = model.encode_key(image)
    assert key.shape == (1, cfg.key_dim, h, w)
    assert f16x.shape == (1, cfg.value_dim, h, w)
    assert f8.shape == (1, key_channels.f8, height // 8, width // 8)
    assert f4.shape == (1, key_channels.f4, height // 4, width // 4)

    masks = torch.rand(num_objects, 1, height, width)
    value = model.encode_value(image, masks, others_from_masks(masks), f16x)
    assert value.shape == (num_objects, cfg.value_dim, h, w)

    logits = model.decode(value, f16x, f8, f4)
    assert logits.shape == (num_objects, 1, height, width)
    assert torch.isfinite(logits).all()


def test_channel_counts_come_from_timm() -> None:
    model = EamStcn(ModelConfig(key_backbone=B0, value_backbone=B1, value_dim=64))
    # B0 and B1 share stride-4/8/16 widths (32/48/112); the value stem takes 5 channels.
    assert (model.key_trunk.channels.f4, model.key_trunk.channels.f8, model.key_trunk.channels.f16) == (32, 48, 112)
    assert model.value_trunk.conv_stem.in_channels == 5
    assert model.key_trunk.conv_stem.in_channels == 3


def test_default_model_size_matches_eamstcn() -> None:
    model = EamStcn()
    total = sum(p.numel() for p in model.parameters())
    assert abs(total - 36.1e6) / 36.1e6 < 0.01, total
    # The 3-channel B1 trunk cut at stride 16 is the EamStcn trunk exactly.
    assert sum(p.numel() for p in model.key_trunk.parameters()) == 1_803_832


def test_forward_raises() -> None:
    model = EamStcn(ModelConfig(key_backbone=B0, value_backbone=B0, value_dim=64))
    with pytest.raises(RuntimeError, match="encode_key"):
        model(torch.zeros(1, 3, 64, 64))


@torch.no_grad()
def test_no_state_between_calls() -> None:
    torch.manual_seed(1)
    model = EamStcn(ModelConfig(key_backbone=B0, value_backbone=B0, value_dim=64)).eval()
    first, second = torch.randn(1, 3, 64, 64), torch.randn(1, 3, 64, 64)
    before = model.encode_key(first)[0]
    model.encode_key(second)
    assert torch.equal(model.encode_key(first)[0], before)


def test_second_model_in_one_process_is_identical_in_structure() -> None:
    # The reference mutated class-level tables at construction; ours must not.
    config = ModelConfig(key_backbone=B0, value_backbone=B1, value_dim=64)
    first, second = EamStcn(config), EamStcn(config)
    assert [(n, p.shape) for n, p in first.named_parameters()] == [(n, p.shape) for n, p in second.named_parameters()]


def test_value_stem_extra_channels_start_at_zero() -> None:
    model = EamStcn(ModelConfig(key_backbone=B0, value_backbone=B0, value_dim=64))
    assert torch.count_nonzero(model.value_trunk.conv_stem.weight[:, 3:]) == 0


def test_unknown_backbone_is_a_clear_error() -> None:
    from eamstcn.network.backbone import BackboneError

    with pytest.raises(BackboneError, match="not_a_net"):
        EamStcn(ModelConfig(key_backbone="not_a_net"))

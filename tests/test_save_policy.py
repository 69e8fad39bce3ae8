"""The save rule on synthetic frames whose pixel changes are known exactly.

Frames are 100 x 100, so one changed pixel is 0.01 % and a diff of n pixels is n/100 %.
Expected decisions are worked out by hand from docs/MEMORY.md in the comments.
"""

from __future__ import annotations

import math

import pytest
import torch

from eamstcn.runtime.config import SaveConfig
from eamstcn.runtime.save_policy import SavePolicy

SIDE = 100  # P = 10,000 pixels
NO_PERIOD = 1000  # save_every that never fires within these short streams


class Stream:
    """Frames where exactly ``n`` pixels change in the image (by 5 in one channel) and
    ``m`` in the mask of object 0 (by 1), between consecutive frames."""

    def __init__(self, num_objects: int = 1, dtype: torch.dtype = torch.float32) -> None:
        self.image = torch.zeros(3, SIDE, SIDE, dtype=dtype)
        self.probs = torch.zeros(num_objects, SIDE, SIDE, dtype=dtype)

    def step(self, image_pixels: int, mask_pixels: int) -> tuple[torch.Tensor, torch.Tensor]:
        self.image = self.image.clone()
        self.probs = self.probs.clone()
        flat_image, flat_mask = self.image[0].view(-1), self.probs[0].view(-1)
        flat_image[:image_pixels] = 5 - flat_image[:image_pixels]  # 0 <-> 5: |diff| = 5 > 4
        flat_mask[:mask_pixels] = 1 - flat_mask[:mask_pixels]  # 0 <-> 1: |diff| = 1 > 0.99
        return self.image, self.probs


def run(
    config: SaveConfig, steps: list[tuple[int, int]], num_objects: int = 1, dtype: torch.dtype = torch.float32
) -> list[bool]:
    """Decisions for t = 1..len(steps); steps[t-1] = changed (image, mask) pixels at t."""
    stream = Stream(num_objects, dtype)
    policy = SavePolicy(config, num_objects)
    policy.observe_first(stream.image, stream.probs)
    return [policy.should_save(t, *stream.step(*step)) for t, step in enumerate(steps, start=1)]


def saved_frames(decisions: list[bool]) -> list[int]:
    return [t for t, save in enumerate(decisions, start=1) if save]


ONLY_TRIGGERS = SaveConfig(save_every=NO_PERIOD, cooldown=0)

# (K, changed (image, mask) pixels at t = 2, expected at t = 2); at t = 1 nothing changes,
# so im_roc = image pixels / 100 and msk_roc = mask pixels / 100 at t = 2.
CONDITIONS = {
    "1 fires: msk_roc .40 > .3": (1, (0, 40), True),
    "1 silent: msk_roc .27 alone": (1, (0, 27), False),
    "2 fires: msk_roc .05 < .1, im_roc .55 > .5": (1, (55, 5), True),
    "2 silent: im_roc .45": (1, (45, 5), False),
    "2 silent: msk_roc .12 not < .1": (1, (55, 12), False),
    "3 fires: K=3, msk_roc .12 > .1": (3, (0, 12), True),
    "3 silent: K=2": (2, (0, 12), False),
    "3 silent: K=3, msk_roc .05": (3, (0, 5), False),
    "4 fires: msk_roc .27 > .25, im_roc .30 > .25": (1, (30, 27), True),
    "4 silent: im_roc .20": (1, (20, 27), False),
    "4 silent: msk_roc .20 (and im_roc .30 < .6 for 5)": (1, (30, 20), False),
    "5 fires: msk_roc .20 > .15, im_roc .70 > .6": (1, (70, 20), True),
    "5 silent: im_roc .55": (1, (55, 20), False),
    "5 silent: msk_roc .12 (not < .1 for 2 either)": (1, (70, 12), False),
}


@pytest.mark.parametrize("case", CONDITIONS)
def test_each_trigger_condition(case: str) -> None:
    num_objects, changed, expected = CONDITIONS[case]
    assert run(ONLY_TRIGGERS, [(0, 0), changed], num_objects) == [False, expected]


def test_rocs_are_absolute_changes_of_the_diffs() -> None:
    # Diffs .40 then 0: msk_roc = .40 fires rule 1. Diffs .40 then .40: rocs 0, nothing.
    assert run(ONLY_TRIGGERS, [(0, 40), (0, 0)]) == [False, True]
    assert run(ONLY_TRIGGERS, [(80, 40), (80, 40)]) == [False, False]


def test_thresholds_come_from_the_config() -> None:
    assert run(SaveConfig(save_every=NO_PERIOD, cooldown=0, mask_roc_high=0.5), [(0, 0), (0, 40)]) == [False, False]
    assert run(SaveConfig(save_every=NO_PERIOD, cooldown=0, many_objects=2), [(0, 0), (0, 12)], 2) == [False, True]


def test_first_call_has_no_roc_so_only_the_period_applies() -> None:
    assert run(ONLY_TRIGGERS, [(10_000, 10_000)]) == [False]
    assert run(SaveConfig(save_every=1, cooldown=0), [(0, 0)]) == [True]


def test_diffs_count_pixels_by_their_sum_over_channels_and_objects() -> None:
    policy = SavePolicy(SaveConfig(), num_objects=2)
    image, probs = torch.zeros(3, SIDE, SIDE), torch.zeros(2, SIDE, SIDE)
    policy.observe_first(image, probs)
    assert policy.stats() == {}
    image, probs = image.clone(), probs.clone()
    image.view(3, -1)[:, 0:10] = 2.0  # 2 + 2 + 2 = 6 > 4: counts
    image.view(3, -1)[:, 10:30] = 1.3  # 3.9: does not
    image.view(3, -1)[1, 30:35] = 4.5  # one channel, 4.5 > 4: counts
    probs.view(2, -1)[:, 0:8] = 0.5  # 0.5 + 0.5 = 1.0 > 0.99: counts
    probs.view(2, -1)[0, 8:20] = 0.9  # 0.9: does not
    policy.should_save(1, image, probs)
    stats = policy.stats()
    assert stats.keys() == {"img_diff", "msk_diff"}
    assert stats["img_diff"] == pytest.approx(0.15) and stats["msk_diff"] == pytest.approx(0.08)
    policy.should_save(2, image, probs)  # no change: both diffs 0, rocs .15 and .08
    assert policy.stats() == pytest.approx({"img_diff": 0.0, "msk_diff": 0.0, "im_roc": 0.15, "msk_roc": 0.08})


def test_periodic_rule_in_adaptive_mode() -> None:
    # Nothing moves: saves only at multiples of 10 (the adaptive default).
    assert saved_frames(run(SaveConfig(), [(0, 0)] * 25)) == [10, 20]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_cooldown_after_every_save(dtype: torch.dtype) -> None:
    # Mask diffs .40, 0, .40, 0, ...: msk_roc = .40 triggers at every t >= 2.
    # Save at 2, the cooldown blocks 3-5 (as the original's max_save_rate = 4); save 6,
    # blocks 7-9; save 10 (trigger and period); 14; 18; 22.
    steps = [(0, 40), (0, 0)] * 12
    assert saved_frames(run(SaveConfig(), steps, dtype=dtype)) == [2, 6, 10, 14, 18, 22]
    # A 4-frame cooldown (t+1..t+4 blocked) saves every 5th frame instead.
    assert saved_frames(run(SaveConfig(cooldown=4), steps, dtype=dtype)) == [2, 7, 12, 17, 22]
    # Without a cooldown every triggered frame saves.
    assert saved_frames(run(SaveConfig(save_every=NO_PERIOD, cooldown=0), steps[:6])) == [2, 3, 4, 5, 6]


def test_cooldown_blocks_the_periodic_rule_too() -> None:
    # every 3, cooldown 3, no motion: save 3, blocks 4-6 (6 too), 7 and 8 are not
    # multiples, save 9, blocks 10-12 (12), save 15, blocks 16-18 (18), save 21.
    assert saved_frames(run(SaveConfig(save_every=3), [(0, 0)] * 23)) == [3, 9, 15, 21]
    # every 2, cooldown 3: save 2, blocks 3-5 (4 too), save 6, 10, 14.
    assert saved_frames(run(SaveConfig(save_every=2), [(0, 0)] * 15)) == [2, 6, 10, 14]


def test_fixed_mode_ignores_motion_and_cooldown() -> None:
    steps = [(70, 40)] * 21
    assert saved_frames(run(SaveConfig(mode="fixed"), steps)) == [5, 10, 15, 20]
    assert saved_frames(run(SaveConfig(mode="fixed", save_every=2), steps[:8])) == [2, 4, 6, 8]


@pytest.mark.parametrize(("new_objects", "expected"), [(2, [False] * 5), (3, [False, False, True, True, False])])
def test_objects_added_mid_stream(new_objects: int, expected: list[bool]) -> None:
    # t = 3: the new object 1 appears on 20 pixels, its previous mask counts as zeros:
    # msk_diff .20, msk_roc .20 fires rule 3 only with K >= 3. t = 4: nothing changes,
    # msk_diff 0, msk_roc .20 again. t = 5: msk_roc 0.
    stream = Stream(num_objects=1)
    policy = SavePolicy(ONLY_TRIGGERS, num_objects=1)
    policy.observe_first(stream.image, stream.probs)
    decisions = [policy.should_save(t, *stream.step(0, 0)) for t in (1, 2)]
    policy.set_num_objects(new_objects)
    stream.probs = torch.cat([stream.probs, torch.zeros(new_objects - 1, SIDE, SIDE)])
    stream.probs[1].view(-1)[:20] = 1.0
    decisions.append(policy.should_save(3, *stream.step(0, 0)))
    assert policy.stats()["msk_diff"] == pytest.approx(0.20)
    decisions += [policy.should_save(t, *stream.step(0, 0)) for t in (4, 5)]
    assert decisions == expected


def test_decide_never_reads_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.sync_guard import forbid_host_reads

    stream = Stream()
    policy = SavePolicy(SaveConfig(), num_objects=1)
    policy.observe_first(stream.image, stream.probs)
    flags = []
    for t in range(1, 13):
        image, probs = stream.step(0, 40 if t % 2 else 0)  # msk_roc .40 from t = 2
        with forbid_host_reads():
            flags.append(policy.decide(image, probs).clone())
    # t=2 triggers; 3-5 cooldown; t=6 triggers; 7-9 cooldown; t=10 periodic; 11-12 cooldown.
    assert [t for t, flag in enumerate(flags, start=1) if flag] == [2, 6, 10]


def test_frames_must_come_in_order() -> None:
    stream = Stream()
    policy = SavePolicy(SaveConfig(), num_objects=1)
    policy.observe_first(stream.image, stream.probs)
    with pytest.raises(ValueError, match="in order"):
        policy.should_save(2, *stream.step(0, 0))


def test_reset_and_misuse() -> None:
    stream = Stream()
    policy = SavePolicy(SaveConfig(), num_objects=1)
    with pytest.raises(RuntimeError, match="observe_first"):
        policy.should_save(1, stream.image, stream.probs)
    policy.observe_first(stream.image, stream.probs)
    with pytest.raises(ValueError, match="t >= 1"):
        policy.should_save(0, stream.image, stream.probs)
    with pytest.raises(ValueError, match="probs"):
        policy.should_save(1, stream.image, torch.zeros(2, SIDE, SIDE))
    assert policy.should_save(1, *stream.step(0, 0)) is False
    assert policy.should_save(2, *stream.step(0, 40)) is True  # now in cooldown
    policy.reset()
    with pytest.raises(RuntimeError, match="observe_first"):
        policy.should_save(3, stream.image, stream.probs)
    policy.observe_first(stream.image, stream.probs)  # a new stream: no cooldown, no series
    assert policy.should_save(1, *stream.step(0, 0)) is False
    assert policy.should_save(2, *stream.step(0, 40)) is True


def test_save_config_defaults_and_validation() -> None:
    assert SaveConfig().every == 10 and SaveConfig(mode="fixed").every == 5 and SaveConfig(save_every=7).every == 7
    for bad in (
        {"mode": "sometimes"},
        {"save_every": 0},
        {"cooldown": -1},
        {"image_threshold": -1.0},
        {"mask_roc_high": math.nan},
        {"many_objects": 0},
    ):
        with pytest.raises(ValueError, match=next(iter(bad))):
            SaveConfig(**bad)  # type: ignore[arg-type]

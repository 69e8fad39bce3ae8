"""The runtime's Session against the readable reference loop (eamstcn/reference.py).

With a top-k that keeps every memory position, a bank that never fills and fixed saving
every 5 frames, the fast step (fixed buffers, bound engines, two-stage top-k read, save
rule on the device, the store of frame t-1 run at the start of frame t) must give the
reference's probabilities: same engines, so what differs is only the runtime's loop.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eamstcn import reference
from eamstcn.runtime.config import MemoryConfig, SaveConfig
from eamstcn.runtime.engines.factory import open_engines
from eamstcn.runtime.session import Session
from tests.helpers.assets import FRAME_SIZE, RuntimeAssets, davis_root

FRAMES = 10
SAVE_EVERY = 5
TOLERANCE = 1e-4  # measured: under 2e-6 on both engines (float32 summation order)


@pytest.fixture(scope="module", params=["torch", "onnxruntime"])
def engines(request: pytest.FixtureRequest, runtime_assets: RuntimeAssets):
    with open_engines(runtime_assets.engines, runtime_assets.checkpoint, backend=request.param, device="cpu") as opened:
        yield opened


@pytest.fixture(scope="module")
def generated_clip() -> tuple[torch.Tensor, torch.Tensor]:
    """A synthetic clip (always there): frames (T, H, W, 3) uint8, first mask (H, W) ids 0..2."""
    from eamstcn.data.synth import generate_sequence

    clip = generate_sequence(seed=3, frames=FRAMES, height=FRAME_SIZE[0], width=FRAME_SIZE[1], objects=2)
    return torch.from_numpy(clip.frames), torch.from_numpy(clip.masks[0])


@pytest.fixture(scope="module")
def davis_clip() -> tuple[torch.Tensor, torch.Tensor]:
    """The first frames of a DAVIS-2016 sequence at the bundle's frame size. Its one
    object is split at its middle column into objects 1 and 2, so K = 2 runs too."""
    import cv2

    from eamstcn.data.davis_io import list_sequences, load_sequence

    root = davis_root()
    if root is None:
        pytest.skip("../shared/data/davis2016 is absent")
    frames, masks = load_sequence(root, list_sequences(root)[0], "480p")
    size = (FRAME_SIZE[1], FRAME_SIZE[0])  # cv2 takes (W, H)
    small = np.stack([cv2.resize(frame, size, interpolation=cv2.INTER_AREA) for frame in frames[:FRAMES]])
    mask = cv2.resize((masks[0] > 0).astype(np.uint8), size, interpolation=cv2.INTER_NEAREST)
    columns = np.nonzero(mask.any(axis=0))[0]
    middle = (columns[0] + columns[-1] + 1) // 2
    mask[:, middle:] *= 2
    assert set(np.unique(mask)) == {0, 1, 2}
    return torch.from_numpy(small), torch.from_numpy(mask)


def _run_session(engines, frames: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, Session]:
    latent_positions = ((FRAME_SIZE[0] + 15) // 16) * ((FRAME_SIZE[1] + 15) // 16)  # h*w per stored frame
    session = Session(
        engines,
        memory=MemoryConfig(capacity=len(frames), top_k=len(frames) * latent_positions),
        save=SaveConfig(mode="fixed", save_every=SAVE_EVERY),
    )
    outputs = [session.step(frames[0], mask).clone()]
    for t in range(1, len(frames)):
        outputs.append(session.step(frames[t], is_last=t == len(frames) - 1).clone())
    return torch.stack(outputs), session


@pytest.mark.parametrize("clip", ["generated", "davis"])
@pytest.mark.parametrize("num_objects", [1, 2])
def test_session_matches_the_reference_loop(engines, clip: str, num_objects: int, request: pytest.FixtureRequest) -> None:
    frames, mask = request.getfixturevalue(f"{clip}_clip")
    mask = torch.where(mask <= num_objects, mask, torch.zeros_like(mask))
    got, session = _run_session(engines, frames, mask)
    expected = reference.segment(engines, frames, mask.long(), save_every=SAVE_EVERY)
    assert got.shape == expected.shape == (FRAMES, num_objects + 1, *FRAME_SIZE)
    assert session.stored_frames == 2  # frames 0 and 5; 10 would be the last one
    difference = (got - expected).abs().max().item()
    print(f"{engines.backend} K={num_objects} {clip}: max |session - reference| = {difference:.2e}")
    assert difference < TOLERANCE, f"{engines.describe()}: max |session - reference| = {difference:.2e}"


def test_the_network_runs_the_reference_as_its_exported_graphs(runtime_assets: RuntimeAssets, generated_clip) -> None:
    from tests.helpers.models import load_model

    frames, mask = generated_clip
    with open_engines(runtime_assets.engines, backend="onnxruntime", device="cpu") as exported:
        expected = reference.segment(exported, frames, mask.long())
    got = reference.segment(reference.NetworkGraphs(load_model(runtime_assets.checkpoint)), frames, mask.long())
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)

"""Parity of the exported graphs against PyTorch on real-looking inputs.

Inputs come from a two-frame synthetic clip (eamstcn.data.synth: textured objects on a
textured, panning background) run through the PyTorch chain the runtime uses: key encoder
on both frames, value encoder on the first frame with its masks, dense softmax readout of
the second frame's key over that memory, decoder. Each ONNX graph then gets exactly the inputs the PyTorch method
got, so errors are measured per graph and do not compound along the chain.

Error measure: ``max_abs = max |a - b|`` and ``max_rel = max_abs / (max |a| + eps)`` with
``a`` the PyTorch output. Dividing by the largest magnitude, not elementwise, keeps the
measure stable where outputs cross zero (logits do); it reads "error as a fraction of the
output's range". For graphs with several outputs we report the worst output.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from eamstcn import ops
from eamstcn.data.synth import generate_sequence
from eamstcn.graph_spec import DECODER, GRAPH_IO, KEY_ENCODER, VALUE_ENCODER
from eamstcn.network import EamStcn, others_from_masks

#: Object counts every export is checked at (the K axis is traced at 2, so both generalise).
PARITY_OBJECTS = (1, 3)
TRACE_OBJECTS = 2
FP32_TOLERANCE = 1e-4
_EPS = 1e-12


@dataclass(frozen=True)
class ErrorStats:
    max_abs: float
    max_rel: float

    def to_dict(self) -> dict[str, float]:
        return {"max_abs": self.max_abs, "max_rel": self.max_rel}


def error_stats(expected: np.ndarray, actual: np.ndarray) -> ErrorStats:
    """Errors of ``actual`` against the reference ``expected`` (any shapes that match)."""
    if expected.shape != actual.shape:
        raise ValueError(f"shape mismatch: expected {expected.shape}, got {actual.shape}")
    reference = expected.astype(np.float64)
    difference = np.abs(reference - actual.astype(np.float64))
    max_abs = float(difference.max()) if difference.size else 0.0
    if not math.isfinite(max_abs):
        return ErrorStats(max_abs=math.inf, max_rel=math.inf)
    return ErrorStats(max_abs=max_abs, max_rel=max_abs / (float(np.abs(reference).max()) + _EPS))


def worst(stats: list[ErrorStats]) -> ErrorStats:
    return ErrorStats(max_abs=max(s.max_abs for s in stats), max_rel=max(s.max_rel for s in stats))


@dataclass(frozen=True)
class ParityCase:
    """Inputs and PyTorch fp32 outputs of every graph for one object count.

    ``inputs[graph][name]`` and ``expected[graph][name]`` follow graph_spec names.
    """

    num_objects: int
    inputs: dict[str, dict[str, torch.Tensor]]
    expected: dict[str, dict[str, torch.Tensor]]

    @property
    def label(self) -> str:
        return f"K={self.num_objects}"


def synthetic_clip(
    seed: int, frames: int, height: int, width: int, objects: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """A short clip with ``objects`` annotated objects: rgb (T, 3, H, W) in [0, 1] and
    per-object probabilities (T, K, 1, H, W) in [0, 1].

    From the project's synthetic video (:func:`eamstcn.data.synth.generate_sequence`:
    textured objects on a textured, panning background). Masks are exact (0/1), as the
    first frame's annotation is.
    """
    sequence = generate_sequence(seed, frames, height, width, objects)
    rgb = torch.from_numpy(np.ascontiguousarray(sequence.frames)).permute(0, 3, 1, 2).float() / 255
    ids = torch.from_numpy(np.ascontiguousarray(sequence.masks)).long()  # (T, H, W), 0 = background
    probs = torch.stack([(ids == index + 1).float() for index in range(objects)], dim=1).unsqueeze(2)
    return rgb, probs


def _prepare_image(rgb: torch.Tensor) -> torch.Tensor:
    """(3, h, w) RGB in [0, 1] -> (1, 3, H, W) normalised and padded, as the runtime does."""
    padded, _ = ops.pad_to_multiple(ops.normalize_image(rgb))
    return padded.unsqueeze(0)


@torch.no_grad()
def make_case(model: EamStcn, frame_size: tuple[int, int], num_objects: int, seed: int = 0) -> ParityCase:
    """Run the PyTorch chain on a two-frame synthetic clip with ``num_objects`` objects."""
    model.eval()
    height, width = frame_size
    rgb, probs = synthetic_clip(seed + num_objects, 2, height, width, num_objects)
    image0, image1 = _prepare_image(rgb[0]), _prepare_image(rgb[1])
    masks, _ = ops.pad_to_multiple(probs[0])  # (K, 1, H, W)
    others = others_from_masks(masks)

    key0, f16x0, _, _ = model.encode_key(image0)
    key1, f16x1, f8_1, f4_1 = model.encode_key(image1)
    value0 = model.encode_value(image0, masks, others, f16x0)
    readout = ops.softmax_readout(key0.flatten(2), value0.flatten(2), key1.flatten(2)).view_as(value0)
    logits = model.decode(readout, f16x1, f8_1, f4_1)

    inputs = {
        KEY_ENCODER: {"image": image1},
        VALUE_ENCODER: {"image": image0, "masks": masks, "others": others, "f16x": f16x0},
        DECODER: {"readout": readout, "f16x": f16x1, "f8": f8_1, "f4": f4_1},
    }
    expected = {
        KEY_ENCODER: {"key": key1, "f16x": f16x1, "f8": f8_1, "f4": f4_1},
        VALUE_ENCODER: {"value": value0},
        DECODER: {"logits": logits},
    }
    for graph, (input_names, output_names) in GRAPH_IO.items():  # the spec is the contract
        assert tuple(inputs[graph]) == input_names and tuple(expected[graph]) == output_names, graph
    return ParityCase(num_objects=num_objects, inputs=inputs, expected=expected)


CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"


def fp16_provider() -> str:
    """Where fp16 graphs run for users: ONNX Runtime's CUDA provider when this machine has
    CUDA and onnxruntime-gpu, else the CPU provider (which lacks many fp16 kernels and
    inserts casts, so its numbers describe the CPU, not the GPU)."""
    import onnxruntime as ort

    if torch.cuda.is_available() and CUDA_PROVIDER in ort.get_available_providers():
        return CUDA_PROVIDER
    return CPU_PROVIDER


def onnx_session(path: str | Path, provider: str = CPU_PROVIDER):  # -> onnxruntime.InferenceSession
    """An ONNX Runtime session on ``provider`` (imported here: only export and runtime
    backends need onnxruntime). Raises RuntimeError when a CUDA session falls back to the CPU."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # the fp16 graphs make ORT CPU print cast-insertion warnings
    # One-shot measurements, often on shared CPUs: spinning worker threads only steal time.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = [provider] if provider == CPU_PROVIDER else [provider, CPU_PROVIDER]
    session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    if provider not in session.get_providers():
        raise RuntimeError(f"{provider} did not load for {Path(path).name}")
    return session


def run_onnx(session, inputs: Mapping[str, torch.Tensor], dtype: type = np.float32) -> dict[str, np.ndarray]:
    """Feed named torch tensors (cast to ``dtype``) to an ONNX Runtime session; name -> output."""
    feeds = {name: tensor.detach().cpu().numpy().astype(dtype) for name, tensor in inputs.items()}
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


def measure(
    path: str | Path, graph: str, cases: list[ParityCase], dtype: type = np.float32, provider: str = CPU_PROVIDER,
) -> dict[str, ErrorStats]:
    """Worst error of the ONNX file ``path`` (graph ``graph``) against PyTorch, per case label.

    ``dtype`` is what the file takes and returns (np.float16 for fp16 files); the reference
    is always the fp32 PyTorch output, so fp16 errors include the precision loss.
    """
    session = onnx_session(path, provider)
    results: dict[str, ErrorStats] = {}
    for case in cases:
        outputs = run_onnx(session, case.inputs[graph], dtype)
        stats = [error_stats(expected.numpy(), outputs[name]) for name, expected in case.expected[graph].items()]
        results[case.label] = worst(stats)
    return results


def trace_inputs(case: ParityCase, graph: str) -> tuple[torch.Tensor, ...]:
    """Positional example inputs for tracing ``graph``, from a case with TRACE_OBJECTS objects."""
    return tuple(case.inputs[graph][name] for name in GRAPH_IO[graph][0])

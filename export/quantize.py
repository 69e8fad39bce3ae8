"""INT8 copies of the fp32 ONNX graphs: ONNX Runtime static quantization (QDQ, per-channel
weights), calibrated on recorded pipeline inputs (:mod:`eamstcn.export.calibration`).

For each graph: pre-process (shape inference and ONNX Runtime's basic fusions, as ONNX
Runtime's guide recommends), calibrate once (MinMax ranges of every tensor, cached), then
quantize with every node quantized and measure the error against the fp32 graph on the
held-out frames. Groups of nodes that are known to be delicate in 8 bits (the
squeeze-excitation branches of EfficientNetV2, its SiLU activations, depthwise
convolutions, the layers that produce graph outputs, the stem that reads the image) are then tried one by one kept in
fp32; a group stays fp32 only when that measurably lowers the error (by
``KEEP_GAIN``), so what ends in the manifest is measured, not assumed.

Graph inputs and outputs stay float32 (QDQ keeps the graph's interface), so the runtime
feeds an INT8 file exactly as it feeds the fp32 one.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from eamstcn.export.calibration import Feeds
from eamstcn.export.int8_target import Int8Recipe

#: A group is kept in fp32 when it lowers the held-out error by at least this fraction.
KEEP_GAIN = 0.10
#: Groups tried, in this order (each on top of the ones kept before it).
GROUP_ORDER = ("se_gates", "silu", "depthwise", "outputs", "stem")
GROUP_HELP = {
    "se_gates": "squeeze-excitation branches (global mean, two 1x1 convs, sigmoid gate) and the gate's multiply",
    "silu": "SiLU activations (Sigmoid and Mul)",
    "depthwise": "depthwise convolutions (one filter per channel: per-tensor activation ranges suit them least)",
    "outputs": "the nodes that produce graph outputs",
    "stem": "the first convolution (reads the normalised image)",
}
CALIBRATION_METHOD = "MinMax"

Progress = Callable[[str], None]


class QuantizeError(RuntimeError):
    """ONNX Runtime could not quantize or run a graph; one line."""


# ------------------------------------------------------------------ graph groups
def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    users: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    return users


def _se_branches(graph: onnx.GraphProto, users: dict[str, list[onnx.NodeProto]]) -> list[list[str]]:
    """Each squeeze-excitation branch: ReduceMean(x) ... Sigmoid -> Mul(x, gate)."""
    branches = []
    for node in graph.node:
        if node.op_type not in ("ReduceMean", "GlobalAveragePool") or not node.input:
            continue
        source = node.input[0]
        seen, frontier, gate_mul = [node.name], list(node.output), None
        for _depth in range(8):  # conv_reduce, act (2 nodes), conv_expand, gate, Mul
            following = [user for name in frontier for user in users.get(name, [])]
            if not following:
                break
            for user in following:
                if user.op_type == "Mul" and source in user.input:
                    gate_mul = user
            if gate_mul is not None:
                break
            seen.extend(user.name for user in following)
            frontier = [out for user in following for out in user.output]
        if gate_mul is not None:
            branches.append(seen + [gate_mul.name])
    return branches


def node_groups(model: onnx.ModelProto) -> dict[str, list[str]]:
    """Group name (:data:`GROUP_ORDER`) -> names of the nodes in it, found from the graph's
    structure (not from layer names). Empty groups are left out."""
    graph = model.graph
    users = _consumers(graph)
    se = sorted({name for branch in _se_branches(graph, users) for name in branch})
    in_se = set(se)
    silu = []
    for node in graph.node:
        if node.op_type != "Sigmoid" or node.name in in_se:
            continue
        for user in users.get(node.output[0], []):
            if user.op_type == "Mul" and node.input[0] in user.input and user.name not in in_se:
                silu.extend([node.name, user.name])
    outputs = {value.name for value in graph.output}
    producing = [node.name for node in graph.node if set(node.output) & outputs]
    inputs = {value.name for value in graph.input}
    stem = [node.name for node in graph.node if node.op_type == "Conv" and node.input and node.input[0] in inputs][:1]
    depthwise = [
        node.name for node in graph.node
        if node.op_type == "Conv" and node.name not in in_se and any(a.name == "group" and a.i > 1 for a in node.attribute)
    ]
    groups = {"se_gates": se, "silu": silu, "depthwise": depthwise, "outputs": producing, "stem": stem}
    return {name: nodes for name, nodes in groups.items() if nodes}


# ------------------------------------------------------------------ error measures
@dataclass(frozen=True)
class Int8Error:
    """INT8 against fp32 ONNX on held-out inputs, worst output per input.

    ``rel_rmse``: mean over inputs of ||a - b|| / ||a||; ``rel_rmse_max`` its maximum;
    ``max_rel``: max |a - b| / max |a| (the fp32 parity measure); ``mask_agreement``:
    for the decoder, the fraction of pixels whose logit has the same sign (None otherwise).
    """

    rel_rmse: float
    rel_rmse_max: float
    max_rel: float
    mask_agreement: float | None
    inputs: int

    def to_dict(self) -> dict[str, Any]:
        return {key: value for key, value in self.__dict__.items()}


def compare(reference: list[dict[str, np.ndarray]], actual: list[dict[str, np.ndarray]], logits: str | None = None) -> Int8Error:
    """Error of ``actual`` against ``reference`` (per input: {output name: array})."""
    rmse, max_rel, agree = [], [], []
    for expected, got in zip(reference, actual, strict=True):
        worst_rmse = worst_rel = 0.0
        for name, a in expected.items():
            a64, b64 = a.astype(np.float64), got[name].astype(np.float64)
            norm = float(np.linalg.norm(a64))
            diff = a64 - b64
            worst_rmse = max(worst_rmse, float(np.linalg.norm(diff)) / (norm + 1e-12))
            worst_rel = max(worst_rel, float(np.abs(diff).max()) / (float(np.abs(a64).max()) + 1e-12))
        rmse.append(worst_rmse)
        max_rel.append(worst_rel)
        if logits is not None:
            agree.append(float(np.mean((expected[logits] > 0) == (got[logits] > 0))))
    if not rmse:
        return Int8Error(math.nan, math.nan, math.nan, None, 0)
    return Int8Error(float(np.mean(rmse)), float(np.max(rmse)), float(np.max(max_rel)),
                     float(np.mean(agree)) if agree else None, len(rmse))


# ------------------------------------------------------------------ ONNX Runtime
def cpu_session(path: str | Path, threads: int | None = None):  # -> onnxruntime.InferenceSession
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as error:
        raise QuantizeError(f"onnxruntime cannot load {Path(path).name}: {_first_line(error)}") from None


def run_all(session, feeds: list[Feeds]) -> list[dict[str, np.ndarray]]:
    names = [output.name for output in session.get_outputs()]
    return [dict(zip(names, session.run(names, item))) for item in feeds]


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else type(error).__name__


def _reader(feeds: list[Feeds]):
    from onnxruntime.quantization import CalibrationDataReader

    class FeedReader(CalibrationDataReader):
        """Hands the recorded feeds to ONNX Runtime's calibrator, one graph call at a time."""

        def __init__(self) -> None:
            self._items = iter(feeds)

        def get_next(self) -> Feeds | None:
            return next(self._items, None)

    return FeedReader()


def preprocess(source: Path, destination: Path) -> Path:
    """ONNX Runtime's quantization pre-processing (basic fusions, shape inference); the
    source itself when pre-processing fails (it is an aid, not a requirement)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(source), str(destination), skip_symbolic_shape=True)
    except Exception:
        return source
    return destination


def quantize_file(source: Path, destination: Path, feeds: list[Feeds], recipe: Int8Recipe, exclude: list[str], cache: Path) -> Path:
    """Static QDQ quantization of ``source`` into ``destination``; ranges from ``cache``
    (written on the first call from ``feeds``, reused after: calibration runs once)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    types = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    try:
        quantize_static(
            str(source), str(destination), _reader(feeds) if not cache.is_file() else None,
            quant_format=QuantFormat.QDQ,
            per_channel=recipe.per_channel,
            reduce_range=recipe.reduce_range,
            activation_type=types[recipe.activation_type],
            weight_type=types[recipe.weight_type],
            nodes_to_exclude=list(exclude),
            calibrate_method=CalibrationMethod.MinMax,
            calibration_cache_path=str(cache),
        )
    except Exception as error:  # ORT raises plain Exceptions with long messages
        raise QuantizeError(f"onnxruntime could not quantize {source.name}: {_first_line(error)}") from None
    return destination


# ------------------------------------------------------------------ the choice
@dataclass(frozen=True)
class Trial:
    """One quantization tried: which groups were kept fp32 and the held-out error."""

    kept_fp32: tuple[str, ...]
    error: Int8Error

    def to_dict(self) -> dict[str, Any]:
        return {"kept_fp32": list(self.kept_fp32), **self.error.to_dict()}


@dataclass
class Int8Graph:
    """What :func:`quantize_graph` wrote for one graph, for the manifest."""

    graph: str
    path: Path
    kept_fp32: dict[str, list[str]]  # group -> node names
    error: Int8Error
    trials: list[Trial] = field(default_factory=list)
    quantized_nodes: int = 0

    def to_manifest(self) -> dict[str, Any]:
        return {
            "kept_fp32": {group: {"why": GROUP_HELP[group], "nodes": nodes} for group, nodes in self.kept_fp32.items()},
            "held_out_error": self.error.to_dict(),
            "trials": [trial.to_dict() for trial in self.trials],
            "quantized_nodes": self.quantized_nodes,
        }


def _quantized_nodes(path: Path) -> int:
    """Nodes fed by a DequantizeLinear of an int8 weight or activation (what runs in INT8)."""
    graph = onnx.load(str(path), load_external_data=False).graph
    dq_outputs = {out for node in graph.node if node.op_type == "DequantizeLinear" for out in node.output}
    return sum(1 for node in graph.node if node.op_type not in ("QuantizeLinear", "DequantizeLinear") and set(node.input) & dq_outputs)


def quantize_graph(
    graph: str, fp32_path: Path, destination: Path, calibration: list[Feeds], held_out: list[Feeds],
    recipe: Int8Recipe, say: Progress = lambda _m: None, keep_gain: float = KEEP_GAIN,
) -> Int8Graph:
    """Quantize ``fp32_path`` into ``destination``, keeping in fp32 the groups that measurably help.

    ``calibration`` and ``held_out`` are the graph's recorded inputs; the held-out ones
    (or the calibration ones where none were held out) measure every trial against the
    fp32 graph. Raises :class:`QuantizeError`.
    """
    if not calibration:
        raise QuantizeError(f"{graph}: no calibration inputs were recorded")
    evaluation = held_out or calibration
    logits = "logits" if graph == "decoder" else None
    # Inside the bundle's staging folder, not /tmp: an export killed here (SIGKILL, no
    # cleanup) leaves it where the next export to the same place removes it with the rest.
    with tempfile.TemporaryDirectory(prefix=f".int8-{graph}-", dir=destination.parent) as temp:
        work = Path(temp)
        source = preprocess(fp32_path, work / "pre.onnx")
        groups = node_groups(onnx.load(str(source), load_external_data=False))
        reference = run_all(cpu_session(fp32_path), evaluation)
        cache = work / "ranges.json"

        def attempt(kept: tuple[str, ...], path: Path) -> Trial:
            exclude = [node for group in kept for node in groups[group]]
            quantize_file(source, path, calibration, recipe, exclude, cache)
            return Trial(kept, compare(reference, run_all(cpu_session(path), evaluation), logits))

        say(f"{graph}: calibrating on {len(calibration)} inputs and quantizing every node")
        best_path = work / "best.onnx"
        best = attempt((), best_path)
        trials = [best]
        for group in GROUP_ORDER:
            if group not in groups:
                continue
            candidate = best.kept_fp32 + (group,)
            trial = attempt(candidate, work / "candidate.onnx")
            trials.append(trial)
            gain = 1.0 - trial.error.rel_rmse / best.error.rel_rmse if best.error.rel_rmse > 0 else 0.0
            verdict = "kept in fp32" if gain >= keep_gain else "quantized"
            say(f"{graph}: {group} in fp32: held-out rel error {best.error.rel_rmse:.4f} -> {trial.error.rel_rmse:.4f} ({verdict})")
            if gain >= keep_gain:
                best = trial
                os.replace(work / "candidate.onnx", best_path)
        shutil.move(str(best_path), str(destination))  # the temp folder may be on another filesystem
    return Int8Graph(
        graph=graph,
        path=destination,
        kept_fp32={group: groups[group] for group in best.kept_fp32},
        error=best.error,
        trials=trials,
        quantized_nodes=_quantized_nodes(destination),
    )

"""Checkpoints: one file with a format tag, a version, the model config, the weights and
optional training state. Written atomically; read only with ``weights_only=True``.

Torch only at import time (the network is imported lazily in :func:`build_model`).
"""

from __future__ import annotations

import os
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from eamstcn import original_checkpoint
from eamstcn.config import ModelConfig
from eamstcn.fileio import atomic_target
from eamstcn.fileio import file_sha256  # noqa: F401  (re-exported: export records checkpoint hashes)
from eamstcn.notices import notice

if TYPE_CHECKING:
    from eamstcn.network import EamStcn

FORMAT_TAG = "eamstcn-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message is one line meant for the user."""


@dataclass
class Checkpoint:
    config: ModelConfig
    weights: dict[str, torch.Tensor]
    training: dict[str, Any] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


def atomic_torch_save(obj: object, path: str | Path) -> None:
    """``torch.save`` to ``path`` through :func:`eamstcn.fileio.atomic_target`.

    A crash or Ctrl-C mid-write leaves the previous file intact, never a torn one.
    """
    with atomic_target(path) as temp, open(temp, "xb") as stream:
        torch.save(obj, stream)
        stream.flush()
        os.fsync(stream.fileno())  # on disk before the rename makes it the checkpoint


def save_checkpoint(
    path: str | Path,
    model: EamStcn,
    training: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
) -> None:
    """Write ``model``'s config and weights (and optional training state) atomically.

    ``training`` may hold optimiser/scheduler state dicts, step counters and RNG state
    as tensors and plain Python values (whatever ``weights_only`` loading accepts).
    """
    payload = {
        "format": FORMAT_TAG,
        "version": FORMAT_VERSION,
        "model_config": model.config.to_dict(),
        "weights": {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()},
        "training": training,
        "metadata": metadata or {},
    }
    atomic_torch_save(payload, path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Read and validate a checkpoint; raises :class:`CheckpointError` with a one-line reason.

    A checkpoint of the original EamStcn research code is converted to our names and config
    (:mod:`eamstcn.original_checkpoint`), saying so once per file on stderr.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint path is not a file: {path}")
    if not zipfile.is_zipfile(path):
        # Every torch.save since 1.6 writes a zip archive; anything else is not ours.
        raise CheckpointError(f"{path} is not a PyTorch checkpoint file")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        if original_checkpoint.pickled_module_classes(path):
            raise CheckpointError(_PICKLED_MODEL.format(path=path, out=path.name.split(".")[0] + "_state.pth.tar")) from None
        if "weights_only" in str(error) or "Unsupported global" in str(error):
            raise CheckpointError(
                f"{path} contains pickled Python objects; refusing to load it "
                "(only weights-only EamStcn checkpoints are accepted)"
            ) from None
        raise CheckpointError(f"{path} is not a PyTorch checkpoint file") from None
    except Exception:  # torch raises many types on arbitrary bytes (KeyError, RuntimeError, ...)
        raise CheckpointError(f"{path} is not a PyTorch checkpoint file (unreadable or truncated)") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_TAG:
        original = original_checkpoint.original_state_dict(payload)
        if original is not None:
            return _converted_original(path, original)
        raise CheckpointError(f"{path} is not an EamStcn checkpoint (no '{FORMAT_TAG}' format tag)")
    version = payload.get("version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint version {version!r}; this eamstcn reads version {FORMAT_VERSION}")
    try:
        config = ModelConfig.from_dict(dict(payload["model_config"]), legacy=True)
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{path} has an invalid model config: {error}") from None
    weights = payload.get("weights")
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise CheckpointError(f"{path} has no weights table")
    return Checkpoint(config=config, weights=weights, training=payload.get("training"), metadata=payload.get("metadata") or {})


#: A whole pickled model (the original's evaluate script saves those): unpickling runs
#: code, so we refuse and say how to get a state dict out of it with its own code.
_PICKLED_MODEL = (
    "{path} is a whole pickled model, not a state dict; refusing to unpickle it. Where its code "
    "imports, run: python -c \"import torch; m = torch.load('{path}', weights_only=False); "
    "torch.save({{'state_dict': m.state_dict()}}, '{out}')\" and pass {out}"
)

#: Files already announced as converted in this process: commands that open a checkpoint
#: several times (bench: export, then each backend) say it once.
_announced: set[tuple[str, int, int]] = set()


def _converted_original(path: Path, state: dict[str, torch.Tensor]) -> Checkpoint:
    """An original EamStcn checkpoint in our terms; one line on stderr says it was converted."""
    try:
        converted = original_checkpoint.convert(state)
    except original_checkpoint.UnsupportedOriginal as error:
        raise CheckpointError(f"{path} is an original EamStcn checkpoint, but {error}") from None
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    # Under torchrun every rank loads the file; rank 0 speaks for all of them.
    if key not in _announced and os.environ.get("RANK", "0") == "0":
        _announced.add(key)
        notice(f"converted an original EamStcn checkpoint ({converted.summary}): {path}")
    return Checkpoint(
        config=converted.config,
        weights=converted.weights,
        metadata={"converted_from": "original EamStcn", "summary": converted.summary},
    )


def check_weights_fit(model: torch.nn.Module, weights: dict[str, torch.Tensor], source: str) -> None:
    """Raise :class:`CheckpointError` naming the first keys that do not fit ``model``."""
    own = model.state_dict()
    missing = [key for key in own if key not in weights]
    unexpected = [key for key in weights if key not in own]
    mismatched = [key for key in own if key in weights and weights[key].shape != own[key].shape]
    problems = []
    if missing:
        problems.append(f"missing {missing[:3]}")
    if unexpected:
        problems.append(f"unexpected {unexpected[:3]}")
    if mismatched:
        first = mismatched[0]
        problems.append(
            f"shape mismatch at {mismatched[:3]} (e.g. {first}: file {tuple(weights[first].shape)} vs model {tuple(own[first].shape)})"
        )
    if problems:
        raise CheckpointError(f"weights in {source} do not fit its model config: " + "; ".join(problems))


def build_model(checkpoint: Checkpoint, source: str = "checkpoint") -> EamStcn:
    """The network described by ``checkpoint``, with its weights, in eval mode on the CPU."""
    from eamstcn.network import EamStcn

    model = EamStcn(checkpoint.config)
    check_weights_fit(model, checkpoint.weights, source)
    model.load_state_dict(checkpoint.weights)
    return model.eval()

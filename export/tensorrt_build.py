"""TensorRT 10 plans from the fp16 ONNX graphs (raw serialised engines, no header).

``tensorrt`` is imported inside the functions that need it: exporting ONNX must work on
machines without it. The optimisation-profile arithmetic is a pure function so that it is
tested everywhere.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from eamstcn.export.onnx_export import OBJECT_AXIS_NAME
from eamstcn.fileio import atomic_write_bytes

Shape = tuple[int, ...]
#: input name -> (min, opt, max) shapes of one optimisation profile.
ProfileShapes = dict[str, tuple[Shape, Shape, Shape]]


class TensorRTBuildError(RuntimeError):
    """TensorRT could not parse or build a graph; the message is one line."""


def tensorrt_version() -> str | None:
    """The installed TensorRT version, or None where ``import tensorrt`` fails."""
    try:
        import tensorrt as trt
    except Exception:  # ImportError, or a broken install failing to load libnvinfer
        return None
    return str(trt.__version__)


def optimal_objects(max_objects: int) -> int:
    """K the builder tunes for: 2 where allowed (a typical clip has one or two objects)."""
    return min(2, max_objects)


def profile_shapes(inputs: Mapping[str, Sequence[int | str]], max_objects: int) -> ProfileShapes:
    """(min, opt, max) shapes for every input that has the object axis ``"K"``.

    ``inputs`` maps input names to manifest shapes, e.g. ``{"masks": ["K", 1, 480, 864]}``.
    K runs from 1 to ``max_objects``; fixed inputs need no profile entry (TensorRT takes
    their shape from the network). Returns an empty dict for a graph without K.
    """
    if max_objects < 1:
        raise ValueError(f"max_objects must be at least 1, got {max_objects}")
    profiles: ProfileShapes = {}
    for name, shape in inputs.items():
        if OBJECT_AXIS_NAME not in shape:
            continue

        def fill(objects: int, shape: Sequence[int | str] = shape) -> Shape:
            return tuple(objects if dim == OBJECT_AXIS_NAME else int(dim) for dim in shape)

        profiles[name] = (fill(1), fill(optimal_objects(max_objects)), fill(max_objects))
    return profiles


def build_engine(
    onnx_path: str | Path,
    plan_path: str | Path,
    shapes: ProfileShapes,
    workspace_gb: float,
    fp16: bool = True,
) -> Path:
    """Parse ``onnx_path``, build a serialised engine and write it atomically to ``plan_path``.

    ``shapes`` comes from :func:`profile_shapes`; one optimisation profile holds them all.
    The workspace memory pool is capped at ``workspace_gb`` GiB.
    """
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(index)) for index in range(parser.num_errors))
        raise TensorRTBuildError(f"TensorRT cannot parse {Path(onnx_path).name}: {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    if shapes:
        profile = builder.create_optimization_profile()
        for name, (minimum, optimum, maximum) in shapes.items():
            profile.set_shape(name, minimum, optimum, maximum)
        config.add_optimization_profile(profile)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise TensorRTBuildError(f"TensorRT failed to build an engine from {Path(onnx_path).name} (see its log above)")
    atomic_write_bytes(Path(plan_path), serialized)  # IHostMemory exposes the buffer protocol
    return Path(plan_path)



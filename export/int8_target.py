"""Which INT8 recipe a CPU wants, as ONNX Runtime prescribes it.

ONNX Runtime's quantization guide ("Data type selection" and the FAQ "When to use
reduce-range and per-channel quantization?", docs/performance/model-optimizations/
quantization.md) and ``quantize_static``'s own docstring (onnxruntime 1.32):

- x86-64 without VNNI (AVX2, AVX-512 without VNNI): the U8S8 kernels use VPMADDUBSW,
  whose 16-bit intermediate sums can saturate; with per-channel weights "you will
  generally need to enable reduce-range": uint8 activations, int8 weights quantized to
  7 bits (``reduce_range=True``). U8U8 is the other cure; we take reduce_range because
  the U8S8 kernels are the fast ones.
- x86-64 with VNNI (AVX512-VNNI, AVX-VNNI, AMX): VPDPBUSD accumulates in 32 bits, no
  saturation: uint8 activations, int8 weights, full 8 bits.
- ARM (dot-product instructions): int8 activations and weights, full 8 bits.

A bundle is portable, so the recipe follows the CPU it is meant for: by default the one
exporting (``auto``); ``--int8-target`` names another.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from eamstcn.cpu_features import detect_target

TARGETS = ("auto", "x86-avx2", "x86-vnni", "arm")


@dataclass(frozen=True)
class Int8Recipe:
    """Quantization types for one target; ``why`` is the line the manifest keeps."""

    target: str
    activation_type: str  # "uint8" or "int8"
    weight_type: str  # "int8"
    reduce_range: bool
    per_channel: bool
    why: str

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def recipe(target: str = "auto", machine: str | None = None, flags: set[str] | None = None) -> Int8Recipe:
    """The quantization recipe for ``target`` (``auto``: this machine). Raises ValueError
    for an unknown target name."""
    if target not in TARGETS:
        raise ValueError(f"unknown INT8 target {target!r}: choose one of {', '.join(TARGETS)}")
    found = ""
    if target == "auto":
        target, found = detect_target(machine, flags)
        found = f"this CPU: {found}; "
    if target == "x86-avx2":
        return Int8Recipe(target, "uint8", "int8", True, True,
                          found + "x86 without VNNI: U8S8 with 7-bit weights (reduce_range) against VPMADDUBSW saturation")
    if target == "x86-vnni":
        return Int8Recipe(target, "uint8", "int8", False, True,
                          found + "x86 with VNNI: U8S8, full 8-bit weights (VPDPBUSD accumulates in 32 bits)")
    return Int8Recipe(target, "int8", "int8", False, True, found + "ARM: S8S8, full 8-bit weights")

"""What this CPU offers for INT8: VNNI on x86 (no saturation in U8S8 dot products), dot
products on ARM. Standard library only; shared by the exporter (which recipe to quantize
with, :mod:`eamstcn.export.int8_target`) and the runtime (a warning when a bundle was
quantized for a CPU class that saturates here)."""

from __future__ import annotations

import platform
from pathlib import Path

VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
ARM_DOT_FLAGS = ("asimddp",)


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (``flags`` on x86, ``Features`` on ARM);
    empty where it cannot be read (other systems)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def detect_target(machine: str | None = None, flags: set[str] | None = None) -> tuple[str, str]:
    """(target, what was found) for this machine: ``x86-vnni``, ``x86-avx2`` or ``arm``."""
    machine = (machine or platform.machine()).lower()
    flags = cpu_flags() if flags is None else flags
    if machine in ("aarch64", "arm64") or machine.startswith("arm"):
        dot = sorted(flags & set(ARM_DOT_FLAGS))
        return "arm", machine + (f" with {', '.join(dot)}" if dot else " (no dot-product flag found)")
    vnni = sorted(flags & set(VNNI_FLAGS))
    if vnni:
        return "x86-vnni", f"{machine} with {', '.join(vnni)}"
    simd = "avx512f" if "avx512f" in flags else "avx2" if "avx2" in flags else "no AVX2 found"
    return "x86-avx2", f"{machine} with {simd}, no VNNI"


def int8_saturation_risk(recipe: dict[str, object], machine: str | None = None, flags: set[str] | None = None) -> str | None:
    """Why INT8 engines quantized with ``recipe`` (the manifest's ``int8.recipe``) may lose
    accuracy on this CPU, or None: full 8-bit weights with uint8 activations saturate the
    U8S8 kernels of x86 CPUs without VNNI (ONNX Runtime's quantization guide)."""
    target, found = detect_target(machine, flags)
    if target == "x86-avx2" and recipe.get("reduce_range") is False and recipe.get("activation_type") == "uint8":
        return (f"these INT8 engines were quantized with full 8-bit weights, which can saturate on this CPU ({found}): "
                "re-export with --int8-target x86-avx2")
    return None

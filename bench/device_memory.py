"""Device memory the bench reports: what the GPU really holds for this process.

``torch.cuda.max_memory_allocated`` sees only PyTorch's caching allocator; ONNX Runtime's
CUDA arena and TensorRT's engines and activations allocate outside it, so their rows
would read near zero. NVML (``pynvml``, from the ``nvidia-ml-py`` package) reports this
process's memory on the device; without it, ``torch.cuda.mem_get_info`` gives the whole
device's used memory (other processes included), and the header says which was used.
"""

from __future__ import annotations

import os

import torch

SOURCE_NVML = "NVML, this process"
SOURCE_MEM_GET_INFO = "cudaMemGetInfo, whole device (other processes included)"


def _nvml_process_mb(device: torch.device) -> float | None:
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        properties = torch.cuda.get_device_properties(device)
        bus_id = f"{getattr(properties, 'pci_domain_id', 0):08x}:{properties.pci_bus_id:02x}:{properties.pci_device_id:02x}.0"
        handle = pynvml.nvmlDeviceGetHandleByPciBusId(bus_id)
        for process in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
            if process.pid == os.getpid() and process.usedGpuMemory is not None:
                return process.usedGpuMemory / 2**20
        return None
    except Exception:  # NVML missing in a container, no permission, old driver: fall back
        return None


def device_memory_mb(device: torch.device) -> tuple[float, str]:
    """(MB in use on ``device``, where the number comes from); NaN on the CPU."""
    if device.type != "cuda":
        return float("nan"), ""
    used = _nvml_process_mb(device)
    if used is not None:
        return used, SOURCE_NVML
    free, total = torch.cuda.mem_get_info(device)
    return (total - free) / 2**20, SOURCE_MEM_GET_INFO

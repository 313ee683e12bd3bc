"""Which backend runs the model: "cpu" (numba @njit kernels) or "cuda" (numba.cuda kernels).

"auto" picks CUDA when numba finds a usable GPU and the CPU otherwise, so a machine without a GPU
behaves as before. Nothing CUDA-related is imported on the CPU path.
"""
from __future__ import annotations

import os
import sys

DEVICES = ("auto", "cpu", "cuda")
_LINUX_GPU_NODES = ("/dev/nvidiactl", "/dev/nvidia0", "/dev/dxg")     # dxg: WSL's GPU


class DeviceUnavailable(ValueError):
    """The requested device cannot be used here."""


def cuda_available() -> bool:
    if sys.platform == "linux" and not os.environ.get("NUMBA_ENABLE_CUDASIM") \
            and not any(os.path.exists(p) for p in _LINUX_GPU_NODES):
        return False                   # no NVIDIA driver: skip importing numba.cuda (~0.1 s at start-up)
    try:
        from numba import cuda
        return bool(cuda.is_available())
    except Exception:                  # no driver, a broken toolkit: no GPU for us
        return False


def resolve_device(device: str = "auto") -> str:
    """"cpu" or "cuda" for "auto" | "cpu" | "cuda"; DeviceUnavailable if "cuda" cannot be used."""
    device = (device or "auto").lower()
    if device not in DEVICES:
        raise DeviceUnavailable(f"unknown device {device!r}: choose one of {', '.join(DEVICES)}")
    if device == "auto":
        return "cuda" if cuda_available() else "cpu"
    if device == "cuda" and not cuda_available():
        raise DeviceUnavailable("--device cuda: numba.cuda finds no usable NVIDIA GPU (check the driver with "
                                "nvidia-smi, and the CUDA libraries numba needs: see docs/gpu.md); "
                                "use --device cpu or auto")
    return device


def load_model(gguf, device: str = "cpu", int8_activations: bool = False):
    """The model for an open GGUFFile on a resolved device ("cpu" or "cuda")."""
    if device == "cuda":
        from .cuda_model import CudaLlamaModel
        return CudaLlamaModel(gguf, int8_activations)
    from .model import DecoderModel
    return DecoderModel(gguf, int8_activations)

"""The CUDA backend's tests (tests/cuda_sim) under numba's CUDA simulator, in a child process.

The simulator must be switched on (NUMBA_ENABLE_CUDASIM=1) before numba is first imported, and this
process has long imported numba for the CPU kernels, hence the subprocess. Every simulated GPU
thread is a Python thread: the folder's shapes are tiny and its run takes about a minute on two
cores (plus the CPU kernels' compilation, if numba's cache does not hold them yet).
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.device import DeviceUnavailable, cuda_available, resolve_device

ROOT = Path(__file__).resolve().parent.parent


def test_cuda_kernels_under_the_simulator():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/cuda_sim"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"simulator tests failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}"
    assert " passed" in proc.stdout and "skipped" not in proc.stdout.splitlines()[-1]


@pytest.mark.skipif(cuda_available(), reason="this machine has a GPU")
def test_device_selection_without_a_gpu():
    assert resolve_device("auto") == "cpu"
    assert resolve_device("cpu") == "cpu"
    with pytest.raises(DeviceUnavailable, match="no usable NVIDIA GPU"):
        resolve_device("cuda")
    with pytest.raises(DeviceUnavailable, match="unknown device"):
        resolve_device("tpu")


def test_cli_refuses_cuda_without_a_gpu_with_a_clear_error(capsys):
    if cuda_available():
        pytest.skip("this machine has a GPU")
    from services.cli import main
    assert main(["generate", "--device", "cuda", "--max-tokens", "1", "hello"]) == 2
    assert "no usable NVIDIA GPU" in capsys.readouterr().err

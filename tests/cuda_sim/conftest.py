"""The CUDA kernels under numba's simulator. Collected only with NUMBA_ENABLE_CUDASIM=1 (see
tests/conftest.py); tests/test_cuda_simulator.py runs this folder in such a process.

Every simulated GPU thread is a Python thread, so shapes here are tiny and a shorter thread
switch interval keeps the barriers (a round of thread switches each) from dominating.
"""
import sys

from numba import config

if config.ENABLE_CUDASIM:
    sys.setswitchinterval(1e-4)

"""The engine's kernels as numba.cuda kernels, beside the CPU ones (../cpu) with the same names.

Each module holds @cuda.jit kernels (suffixed `_kernel`) and a host function under the CPU
kernel's name and signature that picks the launch shape and launches them on device arrays
(numba device arrays, or NumPy arrays, which numba copies in and out around the launch).

Under numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1, see launch.py) the same code runs as Python
threads, which is how the tests check it on machines without a GPU.
"""

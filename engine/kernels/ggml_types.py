"""GGML tensor type ids the kernels compute with (values of gguf.GGMLQuantizationType).

Plain ints so numba freezes them into kernels as constants.
"""
from .cpu_features import HAS_VNNI

F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, BF16 = 0, 1, 2, 3, 6, 7, 8, 10, 11, 12, 13, 14, 30
SUPPORTED_TYPES = (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K)
# have an int8-activation kernel (matmul_q8.has_int8_kernel says the same inside njit code)
INT8_KERNEL_TYPES = (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K)
# the ones the fast mode computes with int8 activations (matmul_q8.int8_pays): where the int8 kernel
# beats the float32 one on this kind of host (`python bench/bench_kernels.py`, int8 time over
# float32 time). With VNNI (Zen 4 EPYC): Q4_K 0.73, Q5_K 0.56, Q6_K 0.38, Q5_0 0.96-1.08, so Q5_0
# stays float32. Without (AVX2-only EPYC, where a dpbusd is two instructions): Q4_K 0.56-0.64,
# Q5_K 0.44-0.47, Q6_K 0.32-0.36, but Q8_0 1.09-1.25 and Q4_1 1.05-1.31, whose float32 kernels
# are the cheapest; Q5_0 0.82-0.86 there, but the 0.5B model's fast decode (mostly Q5_0) did not
# measurably gain from it, so it stays float32 everywhere. The float types are always float32.
INT8_ACTIVATION_TYPES = (Q4_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K) + ((Q4_1, Q8_0) if HAS_VNNI else ())

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
# float32 time). With VNNI (Zen 4 EPYC): Q4_K 0.73, Q5_K 0.56, Q6_K 0.38. Without (AVX2-only EPYC,
# where a dpbusd is two instructions): Q4_K 0.56-0.64, Q5_K 0.44-0.47, Q6_K 0.32-0.36, but Q8_0
# 1.09-1.25, whose float32 kernel is the cheapest (0.92-0.97 since the activation scales come
# per lane, 2026-12-07: not worth the rounding). Q5_0 was 0.96-1.08 with VNNI and 0.82-0.86
# without, and Q4_1 1.05-1.31 without, until Q5_0's offset moved into the integers and every
# block's activation scales became one load (2026-12-07): Q5_0 0.68-0.72 and Q4_1 0.87 on the
# AVX2 EPYC (not yet measured with VNNI, where a dpbusd is one instruction fewer still).
# The float types are always float32.
INT8_ACTIVATION_TYPES = (Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K) + ((Q8_0,) if HAS_VNNI else ())

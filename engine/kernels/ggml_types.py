"""GGML tensor type ids the kernels compute with (values of gguf.GGMLQuantizationType).

Plain ints so numba freezes them into kernels as constants.
"""
from .cpu_features import HAS_VNNI

F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, BF16 = 0, 1, 2, 3, 6, 7, 8, 10, 11, 12, 13, 14, 30
SUPPORTED_TYPES = (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K)
# have an int8-activation kernel (matmul_q8.has_int8_kernel says the same inside njit code)
INT8_KERNEL_TYPES = (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K)
# the ones the fast mode computes with int8 activations (matmul_q8.int8_pays): where the int8 kernel
# beats the float32 one (`python bench/bench_kernels.py`, int8 time over float32 time: Q4_K 0.73,
# Q5_K 0.56, Q6_K 0.38 on a Zen 4 EPYC with VNNI; 0.62, 0.45, 0.36 on an AVX2-only EPYC). Q5_0 does
# not (1.08 on Zen 4), so fast mode computes it in float32 as the exact mode does; the float types
# (F32, F16, BF16) too. Q8_0 only with VNNI: without it, two instructions a dpbusd make its int8
# kernel 1.25x the float32 one (AVX2-only EPYC), where its float32 kernel is at its fastest.
Q8_0_INT8_PAYS = HAS_VNNI
INT8_ACTIVATION_TYPES = (Q4_0, Q4_1, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K) + ((Q8_0,) if Q8_0_INT8_PAYS else ())

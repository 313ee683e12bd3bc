"""GGML tensor type ids the kernels compute with (values of gguf.GGMLQuantizationType).

Plain ints so numba freezes them into kernels as constants.
"""

F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, BF16 = 0, 1, 2, 3, 6, 7, 8, 10, 11, 12, 13, 14, 30
SUPPORTED_TYPES = (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K)
# have an int8-activation kernel (matmul_q8.has_int8_kernel says the same inside njit code)
INT8_KERNEL_TYPES = (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K)
# the ones the fast mode computes with int8 activations (matmul_q8.int8_pays): where the int8 kernel
# beats the float32 one on this kind of host (`python bench/bench_kernels.py`, int8 time over
# float32 time). With VNNI (Zen 4 EPYC): Q4_K 0.73, Q5_K 0.56, Q6_K 0.38. Without (AVX2-only EPYC,
# where a dpbusd is two instructions): Q4_K 0.56-0.64, Q5_K 0.44-0.47, Q6_K 0.32-0.36. Since every
# block's activation scales are one load and Q5_0's offset is in the integers (2026-12-07), on the
# AVX2 EPYC: Q5_0 0.68-0.72 (was 0.82-0.86; 0.96-1.08 with VNNI), Q4_1 0.87 (was 1.05-1.31), Q8_0
# 0.92-0.97 (was 1.09-1.25). Not yet measured with VNNI, where a dpbusd is one instruction fewer
# still. The float types are always float32.
INT8_ACTIVATION_TYPES = (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K)

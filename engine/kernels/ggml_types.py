"""GGML tensor type ids the kernels compute with (values of gguf.GGMLQuantizationType).

Plain ints so numba freezes them into kernels as constants.
"""
F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, BF16 = 0, 1, 2, 3, 6, 7, 8, 10, 11, 12, 13, 14, 30
SUPPORTED_TYPES = (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K)
# have an int8-activation (fast mode) kernel: matmul_q8.has_int8_kernel says the same inside njit code;
# the float types (F32, F16, BF16) are computed in float32 in that mode too
INT8_ACTIVATION_TYPES = (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K)

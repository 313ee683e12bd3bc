"""GGML tensor type ids the kernels compute with (values of gguf.GGMLQuantizationType).

Plain ints so numba freezes them into kernels as constants.
"""
F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, BF16 = 0, 1, 2, 3, 6, 7, 8, 10, 11, 12, 13, 14, 30
SUPPORTED_TYPES = (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K)
# have an int8-activation kernel (matmul_q8.has_int8_kernel says the same inside njit code)
INT8_KERNEL_TYPES = (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K)
# the ones the fast mode computes with int8 activations (matmul_q8.int8_pays): where the int8 kernel
# beats the float32 one (`python bench/bench_kernels.py`: Q4_K 0.73x, Q5_K 0.56x, Q6_K 0.38x the
# float32 time on a Zen 4 EPYC). Q5_0 does not (1.08x), so fast mode computes it in float32 as the
# exact mode does; the float types (F32, F16, BF16) too.
INT8_ACTIVATION_TYPES = (Q4_0, Q4_1, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K)

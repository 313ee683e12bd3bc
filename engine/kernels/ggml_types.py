"""GGML tensor type ids the kernels compute with (values of gguf.GGMLQuantizationType).

Plain ints so numba freezes them into kernels as constants.
"""
F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, BF16 = 0, 1, 2, 3, 6, 7, 8, 10, 11, 12, 13, 14, 30
SUPPORTED_TYPES = (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K)
# have an int8-activation kernel (matmul_q8.has_int8_kernel says the same inside njit code)
INT8_KERNEL_TYPES = (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K)
# the ones the fast mode computes with int8 activations (matmul_q8.int8_pays): where the int8 kernel
# beats the float32 one. Q5_0 and the 256-block K-quants Q4_K, Q5_K, Q6_K do not (their per-16
# activation scales cost a float multiply-add per 32 weights: 1.3-2.0x slower than float32 on an
# AVX-512 VNNI Xeon: `python bench/bench_kernels.py`), so fast mode computes them in float32
# as the exact mode does; the float types (F32, F16, BF16) too.
INT8_ACTIVATION_TYPES = (Q4_0, Q4_1, Q5_1, Q8_0, Q2_K, Q3_K)

"""GGML tensor type ids the kernels compute with (values of gguf.GGMLQuantizationType).

Plain ints so numba freezes them into kernels as constants.
"""
F32, F16, Q4_0, Q4_1, Q8_0, Q4_K, Q6_K = 0, 1, 2, 3, 8, 12, 14
SUPPORTED_TYPES = (F32, F16, Q4_0, Q4_1, Q8_0, Q4_K, Q6_K)
INT8_ACTIVATION_TYPES = (Q4_0, Q4_1, Q8_0, Q4_K, Q6_K)   # have an int8-activation (fast mode) kernel

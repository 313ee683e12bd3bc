"""Matrix products with weights kept in their GGML blocks (CPU, numba): the dispatcher.

    matmul(w, ggml_type, x, out, int8_activations)
        out (T, N) f32 = x (T, K) f32 @ W^T,  W = w (N, row_bytes) u8 in GGML type ggml_type

Three paths, chosen by the number of tokens T:
- T <= INT8_ROW_TOKENS with int8_activations (decode, fast mode), for the types in
  ggml_types.INT8_ACTIVATION_TYPES (where it is the faster kernel): x is quantized to int8 per 16
  values and integer dot products run on the weight blocks (matmul_q8.py), as llama.cpp does.
- T <= F32_ROW_TOKENS (decode, exact mode, speculative verification): float32 dot products on the
  blocks (dot_f32.rows_f32), each 32-weight block decoded in registers once for up to four tokens.
  When every token decoded the row again (and 4-7 tokens took the tiles), a verify step of four
  rows cost 3.1x one row on the 0.5B model on an AVX2-only EPYC; now 2.0x.
- otherwise (prefill, batched decode, speculative verification): dequantized weights and a
  float32 GEMM (matmul_f32.py) over blocks of tokens sized for L2 (prefill-512 of the 1.5B model
  63 -> 82-94 tokens/s on a Zen 5 EPYC).
  On a host without AVX-512 (OUTER_PRODUCT_GEMM), from TOKEN_VECTOR_MIN_TOKENS tokens, an outer
  product over vectors of sixteen tokens that keeps six 16-lane accumulators
  (matmul_token_vectors_f32): on an AVX2-only EPYC 1.8-2.2x the 4x4 dot-product tiles at 16
  tokens, 2.2-2.9x from 32 to 512 (`python bench/bench_gemm.py`). Elsewhere, and below 10 tokens
  (where its vectors of sixteen are mostly empty: 8 sequences of the 0.5B model 134 ms a step
  against 110 on the tiles), matmul_tiles_f32; on an AVX-512 host (Zen 5 EPYC) the outer product
  ran at 0.76-0.98 of the tiles, so those keep the tiles.
"""
from numba import njit

from ..cpu_features import HAS_AVX512F
from .matmul_f32 import block_sums, matmul_rows_f32, matmul_tiles_f32, matmul_token_vectors_f32
from .matmul_q8 import int8_pays, matmul_q8, quantize_rows

INT8_ROW_TOKENS = 3                              # quantize_rows is serial: decode-sized steps
F32_ROW_TOKENS = 4                               # four tokens share a decoded block (dot_f32.rows_f32)
TOKEN_VECTOR_MIN_TOKENS = 10
OUTER_PRODUCT_GEMM = not HAS_AVX512F


@njit(cache=True, nogil=True, inline="always")
def row_products(T, int8_activations):
    """Whether a T-token step takes the row products (int8 or float32) rather than a GEMM."""
    return T <= (INT8_ROW_TOKENS if int8_activations else F32_ROW_TOKENS)


@njit(cache=True, nogil=True)
def matmul(w, ggml_type, x, out, int8_activations):
    """out (T, N) f32 = x (T, K) f32 @ W^T for W = w (N, row_bytes) u8 in GGML type ggml_type."""
    T = x.shape[0]
    int8 = int8_activations and int8_pays(ggml_type)
    if int8 and row_products(T, True):
        matmul_q8(w, ggml_type, quantize_rows(x), out)
    elif row_products(T, False):
        matmul_rows_f32(w, ggml_type, x, block_sums(x), out)
    elif OUTER_PRODUCT_GEMM and T >= TOKEN_VECTOR_MIN_TOKENS:
        matmul_token_vectors_f32(w, ggml_type, x, out)
    else:
        matmul_tiles_f32(w, ggml_type, x, out)

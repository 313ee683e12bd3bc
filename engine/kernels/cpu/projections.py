"""Projections of one input through several weight matrices, in one parallel loop when the step
is decode-sized (CPU, numba).

A decode step is latency-bound on small kernels: every parallel loop costs a thread wake-up, and
the input is prepared (block sums, or int8 quantization) once per input rather than once per
matrix. q/k/v share their input, as do gate/up; each group is one loop over all their rows.
Batch-sized steps go through matmul (its GEMM path) matrix by matrix.

    project(x (T, K) f32, int8_activations, w0, type0, out0, w1, type1, out1, w2, type2, out2)
            out_i (T, N_i) = x @ W_i^T;  an unused slot gets a (0, 0) matrix and output
    gated_ffn(h (T, D) f32, int8_activations, w_gate (F, .) u8, gate_type, w_up (F, .), up_type,
              w_down (D, .), down_type, gelu, gate (T, F) f32, up (T, F) f32, out (T, D) f32)
            out = (act(h Wg^T) * (h Wu^T)) Wd^T, act = silu | gelu_tanh; gate, up are scratch
"""
import numpy as np
from numba import njit, prange

from ..views import ROW_RANGE
from .dot_f32 import rows_f32
from .matmul import matmul, row_products
from .matmul_f32 import block_sums
from .matmul_q8 import int8_pays, no_activations, quantize_rows, rows_q8
from .ops import gelu_tanh_mul, silu_mul


@njit(cache=True, nogil=True, inline="always")
def _rows(ggml_type, w, r0, r1, int8, x, xsum, act, out):
    if int8 and int8_pays(ggml_type):
        rows_q8(ggml_type, w, r0, r1, act, out)
    else:
        rows_f32(ggml_type, w, r0, r1, x, xsum, out)


@njit(cache=True, nogil=True, parallel=True)
def _projections(x, int8, xsum, act, w0, type0, out0, w1, type1, out1, w2, type2, out2):
    """Ranges of ROW_RANGE rows of the three matrices, in one parallel loop."""
    n0 = (w0.shape[0] + ROW_RANGE - 1) // ROW_RANGE
    n1 = (w1.shape[0] + ROW_RANGE - 1) // ROW_RANGE
    for i in prange(n0 + n1 + (w2.shape[0] + ROW_RANGE - 1) // ROW_RANGE):
        if i < n0:
            r = i * ROW_RANGE
            _rows(type0, w0, r, min(r + ROW_RANGE, w0.shape[0]), int8, x, xsum, act, out0)
        elif i < n0 + n1:
            r = (i - n0) * ROW_RANGE
            _rows(type1, w1, r, min(r + ROW_RANGE, w1.shape[0]), int8, x, xsum, act, out1)
        else:
            r = (i - n0 - n1) * ROW_RANGE
            _rows(type2, w2, r, min(r + ROW_RANGE, w2.shape[0]), int8, x, xsum, act, out2)


@njit(cache=True, nogil=True)
def project(x, int8_activations, w0, type0, out0, w1, type1, out1, w2, type2, out2):
    T = x.shape[0]
    int8_activations = int8_activations and (int8_pays(type0) or int8_pays(type1) or int8_pays(type2))
    if not row_products(T, int8_activations):
        matmul(w0, type0, x, out0, int8_activations)
        if w1.shape[0]:
            matmul(w1, type1, x, out1, int8_activations)
        if w2.shape[0]:
            matmul(w2, type2, x, out2, int8_activations)
        return
    xsum = block_sums(x)
    act = quantize_rows(x) if int8_activations else no_activations(T)
    _projections(x, int8_activations, xsum, act, w0, type0, out0, w1, type1, out1, w2, type2, out2)


@njit(cache=True, nogil=True)
def gated_ffn(h, int8_activations, w_gate, gate_type, w_up, up_type, w_down, down_type, gelu, gate, up, out):
    no_matrix = np.empty((0, 0), np.uint8)
    no_output = np.empty((0, 0), np.float32)
    project(h, int8_activations, w_gate, gate_type, gate, w_up, up_type, up, no_matrix, 0, no_output)
    if gelu:
        gelu_tanh_mul(gate, up, gate)
    else:
        silu_mul(gate, up, gate)
    project(gate, int8_activations, w_down, down_type, out, no_matrix, 0, no_output, no_matrix, 0, no_output)

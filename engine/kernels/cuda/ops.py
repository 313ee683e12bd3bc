"""Element-wise and normalisation kernels of the Llama block (CUDA).

Same names and signatures as ../cpu/ops.py; arguments are device arrays. Element-wise kernels
loop grid-stride over their elements; RMSNorm takes one block per row.
"""
import math

import numpy as np
from numba import cuda, float32

from .dequant import weight_at
from .launch import ROW_THREADS, elementwise_grid
from .reduce import block_sum

_f32 = np.float32


# ----------------------------------------------------------------------------- RMSNorm

@cuda.jit
def _rms_norm_kernel(x, weight, eps, out):
    t = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    D = x.shape[1]
    buf = cuda.shared.array(ROW_THREADS, float32)
    squares = float32(0.0)
    for k in range(tid, D, cuda.blockDim.x):
        squares += x[t, k] * x[t, k]
    scale = _f32(1.0) / math.sqrt(block_sum(buf, squares) / _f32(D) + _f32(eps))
    for k in range(tid, D, cuda.blockDim.x):
        out[t, k] = x[t, k] * scale * weight[k]


def rms_norm(x, weight, eps, out):
    """out (T, D) = x (T, D) / rms(x) * weight (D,); rms over D, in float32. out may be x."""
    _rms_norm_kernel[x.shape[0], ROW_THREADS](x, weight, np.float32(eps), out)


# ----------------------------------------------------------------------------- RoPE

@cuda.jit
def _rope_tables_kernel(positions, inv_freq, cos_out, sin_out):
    half = inv_freq.shape[0]
    for e in range(cuda.grid(1), positions.shape[0] * half, cuda.gridsize(1)):
        t = e // half
        i = e % half
        angle = np.float64(positions[t]) * inv_freq[i]       # float64, as the CPU kernel
        cos_out[t, i] = math.cos(angle)
        sin_out[t, i] = math.sin(angle)


def rope_tables(positions, inv_freq, cos_out, sin_out):
    """cos/sin (T, rope_dim/2) of positions (T,) i32 times inv_freq (rope_dim/2,) f64 (scaling folded in)."""
    blocks, threads = elementwise_grid(cos_out.shape[0] * cos_out.shape[1])
    _rope_tables_kernel[blocks, threads](positions, inv_freq, cos_out, sin_out)


@cuda.jit
def _rope_kernel(x, num_heads, head_dim, cos, sin):
    half = cos.shape[1]
    per_token = num_heads * half
    for e in range(cuda.grid(1), x.shape[0] * per_token, cuda.gridsize(1)):
        t = e // per_token
        h = (e % per_token) // half
        i = e % half
        o = h * head_dim + 2 * i
        a = x[t, o]
        b = x[t, o + 1]
        x[t, o] = a * cos[t, i] - b * sin[t, i]
        x[t, o + 1] = a * sin[t, i] + b * cos[t, i]


def rope(x, num_heads, head_dim, cos, sin):
    """Rotate x (T, num_heads*head_dim) in place, GGML 'normal' mode: pairs (2i, 2i+1) of the first
    2*cos.shape[1] dimensions of each head turn by angle i; cos, sin (T, rope_dim/2)."""
    blocks, threads = elementwise_grid(x.shape[0] * num_heads * cos.shape[1])
    _rope_kernel[blocks, threads](x, num_heads, head_dim, cos, sin)


# ----------------------------------------------------------------------------- SiLU-gated FFN, residual

@cuda.jit
def _silu_mul_kernel(gate, up, out):
    F = gate.shape[1]
    for e in range(cuda.grid(1), gate.shape[0] * F, cuda.gridsize(1)):
        g = gate[e // F, e % F]
        out[e // F, e % F] = g / (_f32(1.0) + math.exp(-g)) * up[e // F, e % F]


def silu_mul(gate, up, out):
    """out (T, F) = silu(gate) * up = gate / (1 + exp(-gate)) * up. out may be gate."""
    blocks, threads = elementwise_grid(gate.shape[0] * gate.shape[1])
    _silu_mul_kernel[blocks, threads](gate, up, out)


@cuda.jit
def _add_kernel(x, y):
    D = x.shape[1]
    for e in range(cuda.grid(1), x.shape[0] * D, cuda.gridsize(1)):
        x[e // D, e % D] += y[e // D, e % D]


def add_inplace(x, y):
    """x (T, D) += y (T, D)."""
    blocks, threads = elementwise_grid(x.shape[0] * x.shape[1])
    _add_kernel[blocks, threads](x, y)


# ----------------------------------------------------------------------------- embedding, row gather

_embed_kernels = {}


def _embed_kernel(ggml_type):
    if ggml_type not in _embed_kernels:
        @cuda.jit
        def kernel(token_ids, table, out):
            D = out.shape[1]
            for e in range(cuda.grid(1), out.shape[0] * D, cuda.gridsize(1)):
                out[e // D, e % D] = weight_at(table[token_ids[e // D]], ggml_type, e % D)
        _embed_kernels[ggml_type] = kernel
    return _embed_kernels[ggml_type]


def embed(token_ids, table, ggml_type, out):
    """out (T, D) = rows token_ids (T,) of the embedding table (vocab, row_bytes) in its GGML type."""
    blocks, threads = elementwise_grid(out.shape[0] * out.shape[1])
    _embed_kernel(int(ggml_type))[blocks, threads](token_ids, table, out)


@cuda.jit
def _gather_rows_kernel(x, rows, out):
    D = x.shape[1]
    for e in range(cuda.grid(1), rows.shape[0] * D, cuda.gridsize(1)):
        out[e // D, e % D] = x[rows[e // D], e % D]


def gather_rows(x, rows, out):
    """out (R, D) = x (T, D) [rows (R,) i32]."""
    blocks, threads = elementwise_grid(out.shape[0] * out.shape[1])
    _gather_rows_kernel[blocks, threads](x, rows, out)


@cuda.jit
def _fill_kernel(flat, value):
    for e in range(cuda.grid(1), flat.shape[0], cuda.gridsize(1)):
        flat[e] = value


def fill(flat, value):
    """flat (n,) = value: initialises device memory without a host copy of it."""
    blocks, threads = elementwise_grid(flat.shape[0])
    _fill_kernel[blocks, threads](flat, value)

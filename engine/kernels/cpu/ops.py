"""Element-wise and normalisation kernels of the Llama block (CPU, numba)."""
import numpy as np
from numba import njit, prange

from ..simd import hsum, vadd, vdiv, vexp, vfma, vload, vmul, vsplat, vstore, vsub, vzero
from .dequant import dequantize_row

_f32 = np.float32


@njit(cache=True, parallel=True)
def rms_norm(x, weight, eps, out):
    """out (T, D) = x (T, D) / rms(x) * weight (D,); rms over D, in float32."""
    D = x.shape[1]
    for t in prange(x.shape[0]):
        xt = x[t]
        ot = out[t]
        acc = vzero()
        for k in range(0, D, 16):
            v = vload(xt, k)
            acc = vfma(v, v, acc)
        scale = vsplat(_f32(1.0) / np.sqrt(hsum(acc) / _f32(D) + _f32(eps)))
        for k in range(0, D, 16):
            vstore(ot, k, vmul(vmul(vload(xt, k), scale), vload(weight, k)))


@njit(cache=True)
def rope_tables(positions, inv_freq, cos_out, sin_out):
    """cos/sin (T, rope_dim/2) of positions (T,) i32 times inv_freq (rope_dim/2,) f64 (linear scaling folded in)."""
    for t in range(positions.shape[0]):
        for i in range(inv_freq.shape[0]):
            angle = np.float64(positions[t]) * inv_freq[i]
            cos_out[t, i] = np.cos(angle)
            sin_out[t, i] = np.sin(angle)


@njit(cache=True, parallel=True)
def rope(x, num_heads, head_dim, cos, sin):
    """Rotate x (T, num_heads*head_dim) in place, GGML 'normal' mode (the Llama GGUF layout).

    Pairs (2i, 2i+1) of the first 2*cos.shape[1] dimensions of each head turn by angle i;
    cos, sin (T, rope_dim/2) from rope_tables.
    """
    half = cos.shape[1]
    for t in prange(x.shape[0]):
        for h in range(num_heads):
            base = h * head_dim
            for i in range(half):
                a = x[t, base + 2 * i]
                b = x[t, base + 2 * i + 1]
                c = cos[t, i]
                s = sin[t, i]
                x[t, base + 2 * i] = a * c - b * s
                x[t, base + 2 * i + 1] = a * s + b * c


@njit(cache=True, parallel=True)
def silu_mul(gate, up, out):
    """out (T, F) = silu(gate) * up = gate / (1 + exp(-gate)) * up."""
    F = gate.shape[1]
    one = vsplat(_f32(1.0))
    zero = vzero()
    for t in prange(gate.shape[0]):
        g_row = gate[t]
        u_row = up[t]
        o_row = out[t]
        for k in range(0, F, 16):
            g = vload(g_row, k)
            sig = vdiv(one, vadd(one, vexp(vsub(zero, g))))
            vstore(o_row, k, vmul(vmul(g, sig), vload(u_row, k)))


@njit(cache=True, parallel=True)
def add_inplace(x, y):
    """x (T, D) += y (T, D)."""
    for t in prange(x.shape[0]):
        xt = x[t]
        yt = y[t]
        for k in range(0, x.shape[1], 16):
            vstore(xt, k, vadd(vload(xt, k), vload(yt, k)))


@njit(cache=True, parallel=True)
def embed(token_ids, table, ggml_type, out):
    """out (T, D) = rows token_ids (T,) of the embedding table (vocab, row_bytes) in its GGML type."""
    for t in prange(token_ids.shape[0]):
        dequantize_row(ggml_type, table[token_ids[t]], out[t])

"""Element-wise and normalisation kernels of the Llama block (CPU, numba).

Each runs serially for decode-sized steps (a few rows: waking a thread costs more than the work)
and in parallel over rows for batches.
"""
import numpy as np
from numba import njit, prange

from ..simd import hsum, vadd, vdiv, vexp, vfma, vload, vmul, vsplat, vstore, vsub, vzero
from .dequant import dequantize_row

PARALLEL_MIN_ROWS = 8
_f32 = np.float32


# ----------------------------------------------------------------------------- RMSNorm

@njit(cache=True, nogil=True, inline="always")
def _rms_norm_row(xt, weight, eps, ot):
    D = xt.shape[0]
    acc = vzero()
    for k in range(0, D, 16):
        v = vload(xt, k)
        acc = vfma(v, v, acc)
    scale = vsplat(_f32(1.0) / np.sqrt(hsum(acc) / _f32(D) + _f32(eps)))
    for k in range(0, D, 16):
        vstore(ot, k, vmul(vmul(vload(xt, k), scale), vload(weight, k)))


@njit(cache=True, nogil=True, parallel=True)
def _rms_norm_parallel(x, weight, eps, out):
    for t in prange(x.shape[0]):
        _rms_norm_row(x[t], weight, eps, out[t])


@njit(cache=True, nogil=True)
def rms_norm(x, weight, eps, out):
    """out (T, D) = x (T, D) / rms(x) * weight (D,); rms over D, in float32. out may be x."""
    if x.shape[0] >= PARALLEL_MIN_ROWS:
        _rms_norm_parallel(x, weight, eps, out)
    else:
        for t in range(x.shape[0]):
            _rms_norm_row(x[t], weight, eps, out[t])


# ----------------------------------------------------------------------------- RoPE

@njit(cache=True, nogil=True)
def rope_tables(positions, inv_freq, cos_out, sin_out):
    """cos/sin (T, rope_dim/2) of positions (T,) i32 times inv_freq (rope_dim/2,) f64 (scaling folded in)."""
    for t in range(positions.shape[0]):
        for i in range(inv_freq.shape[0]):
            angle = np.float64(positions[t]) * inv_freq[i]
            cos_out[t, i] = np.cos(angle)
            sin_out[t, i] = np.sin(angle)


@njit(cache=True, nogil=True, inline="always")
def _rope_row(xt, num_heads, head_dim, cos_t, sin_t):
    for h in range(num_heads):
        base = h * head_dim
        for i in range(cos_t.shape[0]):
            a = xt[base + 2 * i]
            b = xt[base + 2 * i + 1]
            xt[base + 2 * i] = a * cos_t[i] - b * sin_t[i]
            xt[base + 2 * i + 1] = a * sin_t[i] + b * cos_t[i]


@njit(cache=True, nogil=True, parallel=True)
def _rope_parallel(x, num_heads, head_dim, cos, sin):
    for t in prange(x.shape[0]):
        _rope_row(x[t], num_heads, head_dim, cos[t], sin[t])


@njit(cache=True, nogil=True)
def rope(x, num_heads, head_dim, cos, sin):
    """Rotate x (T, num_heads*head_dim) in place, GGML 'normal' mode (the Llama GGUF layout):
    pairs (2i, 2i+1) of the first 2*cos.shape[1] dimensions of each head turn by angle i;
    cos, sin (T, rope_dim/2) from rope_tables."""
    if x.shape[0] >= PARALLEL_MIN_ROWS:
        _rope_parallel(x, num_heads, head_dim, cos, sin)
    else:
        for t in range(x.shape[0]):
            _rope_row(x[t], num_heads, head_dim, cos[t], sin[t])


@njit(cache=True, nogil=True, inline="always")
def _rope_neox_row(xt, num_heads, head_dim, cos_t, sin_t):
    half = cos_t.shape[0]
    for h in range(num_heads):
        base = h * head_dim
        for i in range(half):
            a = xt[base + i]
            b = xt[base + half + i]
            xt[base + i] = a * cos_t[i] - b * sin_t[i]
            xt[base + half + i] = a * sin_t[i] + b * cos_t[i]


@njit(cache=True, nogil=True, parallel=True)
def _rope_neox_parallel(x, num_heads, head_dim, cos, sin):
    for t in prange(x.shape[0]):
        _rope_neox_row(x[t], num_heads, head_dim, cos[t], sin[t])


@njit(cache=True, nogil=True)
def rope_neox(x, num_heads, head_dim, cos, sin):
    """Rotate x (T, num_heads*head_dim) in place, GGML NEOX mode (Qwen2, Gemma 3; transformers'
    rotate_half): dimensions i and i + rope_dim/2 of each head turn together by angle i."""
    if x.shape[0] >= PARALLEL_MIN_ROWS:
        _rope_neox_parallel(x, num_heads, head_dim, cos, sin)
    else:
        for t in range(x.shape[0]):
            _rope_neox_row(x[t], num_heads, head_dim, cos[t], sin[t])


# ----------------------------------------------------------------------------- per-head RMSNorm, bias

@njit(cache=True, nogil=True)
def head_rms_norm(x, num_heads, head_dim, weight, eps):
    """x (T, num_heads*head_dim) in place: RMSNorm over each head's head_dim values, times weight (hd,)."""
    for t in range(x.shape[0]):
        for h in range(num_heads):
            part = x[t, h * head_dim:(h + 1) * head_dim]
            _rms_norm_row(part, weight, eps, part)


@njit(cache=True, nogil=True)
def add_bias(x, bias):
    """x (T, N) += bias (N,)."""
    for t in range(x.shape[0]):
        for n in range(x.shape[1]):
            x[t, n] += bias[n]


# ----------------------------------------------------------------------------- SiLU-gated FFN

@njit(cache=True, nogil=True, inline="always")
def _silu_mul_row(g_row, u_row, o_row):
    one = vsplat(_f32(1.0))
    zero = vzero()
    for k in range(0, g_row.shape[0], 16):
        g = vload(g_row, k)
        sig = vdiv(one, vadd(one, vexp(vsub(zero, g))))
        vstore(o_row, k, vmul(vmul(g, sig), vload(u_row, k)))


@njit(cache=True, nogil=True, parallel=True)
def _silu_mul_parallel(gate, up, out):
    for t in prange(gate.shape[0]):
        _silu_mul_row(gate[t], up[t], out[t])


@njit(cache=True, nogil=True)
def silu_mul(gate, up, out):
    """out (T, F) = silu(gate) * up = gate / (1 + exp(-gate)) * up. out may be gate."""
    if gate.shape[0] >= PARALLEL_MIN_ROWS:
        _silu_mul_parallel(gate, up, out)
    else:
        for t in range(gate.shape[0]):
            _silu_mul_row(gate[t], up[t], out[t])


# ----------------------------------------------------------------------------- GELU(tanh)-gated FFN

_GELU_C = np.float32(np.sqrt(2.0 / np.pi))


@njit(cache=True, nogil=True, inline="always")
def _gelu_tanh_mul_row(g_row, u_row, o_row):
    """0.5 g (1 + tanh(c (g + 0.044715 g^3))) u, with tanh(y) = 1 - 2 / (exp(2y) + 1): exp overflowing
    to inf gives exactly 1, underflowing to 0 gives -1."""
    one = vsplat(_f32(1.0))
    two = vsplat(_f32(2.0))
    half = vsplat(_f32(0.5))
    c = vsplat(_f32(_GELU_C) * _f32(2.0))
    cubic = vsplat(_f32(0.044715))
    for k in range(0, g_row.shape[0], 16):
        g = vload(g_row, k)
        inner = vmul(c, vfma(vmul(cubic, vmul(g, g)), g, g))       # 2y
        tanh = vsub(one, vdiv(two, vadd(vexp(inner), one)))
        vstore(o_row, k, vmul(vmul(vmul(half, g), vadd(one, tanh)), vload(u_row, k)))


@njit(cache=True, nogil=True, parallel=True)
def _gelu_tanh_mul_parallel(gate, up, out):
    for t in prange(gate.shape[0]):
        _gelu_tanh_mul_row(gate[t], up[t], out[t])


@njit(cache=True, nogil=True)
def gelu_tanh_mul(gate, up, out):
    """out (T, F) = gelu_tanh(gate) * up (Gemma's FFN; torch's gelu(approximate="tanh")). out may be gate."""
    if gate.shape[0] >= PARALLEL_MIN_ROWS:
        _gelu_tanh_mul_parallel(gate, up, out)
    else:
        for t in range(gate.shape[0]):
            _gelu_tanh_mul_row(gate[t], up[t], out[t])


# ----------------------------------------------------------------------------- residual, embedding

@njit(cache=True, nogil=True)
def add_inplace(x, y):
    """x (T, D) += y (T, D). Memory-bound and short: no threads."""
    for t in range(x.shape[0]):
        xt = x[t]
        yt = y[t]
        for k in range(0, x.shape[1], 16):
            vstore(xt, k, vadd(vload(xt, k), vload(yt, k)))


@njit(cache=True, nogil=True, parallel=True)
def embed(token_ids, table, ggml_type, out):
    """out (T, D) = rows token_ids (T,) of the embedding table (vocab, row_bytes) in its GGML type."""
    for t in prange(token_ids.shape[0]):
        dequantize_row(ggml_type, table[token_ids[t]], out[t])

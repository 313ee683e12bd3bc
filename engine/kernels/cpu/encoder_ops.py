"""Kernels of a BERT-family encoder (CPU, numba). Its matrix products are matmul.py's, on F32
weights; these are the pieces a decoder does not have.

A batch is its sequences' tokens packed one after another, (T, D); seq_starts (S+1,) i32 marks
where each sequence starts (seq_starts[S] = T). No padding is ever computed.
"""
import numpy as np
from numba import njit, prange

from ..simd import hmax, hsum, vabs, vadd, vcopysign, vdiv, vexp, vfma, vload, vmax, vmul, vsplat, vstore, vsub, vzero

_f32 = np.float32

@njit(cache=True, nogil=True, inline="always")
def _verf(x):
    """erf of each lane: erfc(z) = t exp(-z^2 + P(t)), t = 1 / (1 + z/2) (Numerical Recipes'
    erfcc, relative error < 1.2e-7), erf(x) = sign(x) (1 - erfc(|x|))."""
    z = vabs(x)
    t = vdiv(vsplat(_f32(1.0)), vfma(vsplat(_f32(0.5)), z, vsplat(_f32(1.0))))
    p = vsplat(_f32(0.17087277))
    p = vfma(p, t, vsplat(_f32(-0.82215223)))
    p = vfma(p, t, vsplat(_f32(1.48851587)))
    p = vfma(p, t, vsplat(_f32(-1.13520398)))
    p = vfma(p, t, vsplat(_f32(0.27886807)))
    p = vfma(p, t, vsplat(_f32(-0.18628806)))
    p = vfma(p, t, vsplat(_f32(0.09678418)))
    p = vfma(p, t, vsplat(_f32(0.37409196)))
    p = vfma(p, t, vsplat(_f32(1.00002368)))
    p = vfma(p, t, vsplat(_f32(-1.26551223)))
    erfc = vmul(t, vexp(vsub(p, vmul(z, z))))
    return vcopysign(vsub(vsplat(_f32(1.0)), erfc), x)


@njit(cache=True, nogil=True, parallel=True)
def gelu_inplace(x):
    """x (T, F) = 0.5 x (1 + erf(x / sqrt 2)): BERT's exact GELU, erf to 1.2e-7."""
    half = vsplat(_f32(0.5))
    one = vsplat(_f32(1.0))
    inv_sqrt2 = vsplat(_f32(0.7071067811865476))
    for t in prange(x.shape[0]):
        row = x[t]
        for k in range(0, x.shape[1], 16):
            v = vload(row, k)
            vstore(row, k, vmul(vmul(half, v), vadd(one, _verf(vmul(v, inv_sqrt2)))))


@njit(cache=True, nogil=True, parallel=True)
def add_bias(x, bias):
    """x (T, N) += bias (N,)."""
    for t in prange(x.shape[0]):
        row = x[t]
        for k in range(0, x.shape[1], 16):
            vstore(row, k, vadd(vload(row, k), vload(bias, k)))


@njit(cache=True, nogil=True, parallel=True)
def layer_norm(x, weight, bias, eps, out):
    """out (T, D) = (x - mean) / sqrt(var + eps) * weight + bias, per row. out may be x."""
    D = x.shape[1]
    for t in prange(x.shape[0]):
        xt = x[t]
        ot = out[t]
        s = vzero()
        for k in range(0, D, 16):
            s = vadd(s, vload(xt, k))
        mean = vsplat(hsum(s) / _f32(D))
        ss = vzero()
        for k in range(0, D, 16):
            c = vsub(vload(xt, k), mean)
            ss = vfma(c, c, ss)
        inv = vsplat(_f32(1.0) / np.sqrt(hsum(ss) / _f32(D) + _f32(eps)))
        for k in range(0, D, 16):
            c = vmul(vsub(vload(xt, k), mean), inv)
            vstore(ot, k, vfma(c, vload(weight, k), vload(bias, k)))


@njit(cache=True, nogil=True, parallel=True)
def encoder_attention(q, k, v, seq_starts, num_heads, scale, out):
    """Bidirectional attention of each sequence over its own tokens.

    q, k, v (T, H*hd) f32; seq_starts (S+1,) i32; out (T, H*hd). hd a multiple of 16.
    Keys are transposed into a (hd, L) buffer per (sequence, head): 16 keys' scores per FMA chain.
    """
    hd = q.shape[1] // num_heads
    n_seqs = seq_starts.shape[0] - 1
    for item in prange(n_seqs * num_heads):
        s = item // num_heads
        h = item % num_heads
        a = seq_starts[s]
        L = seq_starts[s + 1] - a
        padded = (L + 15) // 16 * 16
        kt = np.zeros((hd, padded), np.float32)
        for j in range(L):
            for d in range(hd):
                kt[d, j] = k[a + j, h * hd + d]
        scores = np.empty(padded, np.float32)
        vscale = vsplat(_f32(scale))
        for i in range(L):
            qi = q[a + i, h * hd:(h + 1) * hd]
            for j0 in range(0, padded, 16):
                acc = vzero()
                for d in range(hd):
                    acc = vfma(vsplat(qi[d]), vload(kt[d], j0), acc)
                vstore(scores, j0, vmul(acc, vscale))
            for j in range(L, padded):
                scores[j] = _f32(-3.0e38)
            mv = vload(scores, 0)
            for j0 in range(16, padded, 16):
                mv = vmax(mv, vload(scores, j0))
            m = vsplat(hmax(mv))
            total = vzero()
            for j0 in range(0, padded, 16):
                e = vexp(vsub(vload(scores, j0), m))
                vstore(scores, j0, e)
                total = vadd(total, e)
            inv = _f32(1.0) / hsum(total)
            oi = out[a + i, h * hd:(h + 1) * hd]
            for d0 in range(0, hd, 16):
                acc = vzero()
                for j in range(L):
                    acc = vfma(vsplat(scores[j]), vload(v[a + j], h * hd + d0), acc)
                vstore(oi, d0, vmul(acc, vsplat(inv)))


@njit(cache=True, nogil=True)
def mean_pool_normalize(x, seq_starts, out):
    """out (S, D): the mean of each sequence's rows of x (T, D), scaled to unit length."""
    D = x.shape[1]
    for s in range(seq_starts.shape[0] - 1):
        a = seq_starts[s]
        b = seq_starts[s + 1]
        for k in range(0, D, 16):
            acc = vzero()
            for t in range(a, b):
                acc = vadd(acc, vload(x[t], k))
            vstore(out[s], k, vmul(acc, vsplat(_f32(1.0) / _f32(b - a))))
        ss = vzero()
        for k in range(0, D, 16):
            v = vload(out[s], k)
            ss = vfma(v, v, ss)
        inv = vsplat(_f32(1.0) / max(np.sqrt(hsum(ss)), _f32(1e-12)))
        for k in range(0, D, 16):
            vstore(out[s], k, vmul(vload(out[s], k), inv))


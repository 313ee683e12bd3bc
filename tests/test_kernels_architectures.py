"""The kernels other architectures add to Llama's (Qwen2, Gemma 3) against their NumPy references."""
import numpy as np
import pytest

from engine.kernels import reference as R
from engine.kernels.cpu.attention import paged_attention, paged_attention_window, write_kv
from engine.kernels.cpu.ops import add_bias, gelu_tanh_mul, head_rms_norm, rope_neox, rope_tables


@pytest.mark.parametrize("tokens", [3, 9])          # serial and parallel paths
def test_rope_neox_rotates_halves(tokens, rng):
    heads, head_dim = 3, 64
    x = rng.standard_normal((tokens, heads * head_dim)).astype(np.float32)
    positions = rng.integers(0, 5000, tokens).astype(np.int32)
    inv_freq = 1.0 / 1e6 ** (np.arange(0, head_dim, 2) / head_dim)
    cos = np.empty((tokens, head_dim // 2), np.float32)
    sin = np.empty_like(cos)
    rope_tables(positions, inv_freq, cos, sin)
    y = x.copy()
    rope_neox(y, heads, head_dim, cos, sin)
    np.testing.assert_allclose(y, R.rope_neox(x, heads, head_dim, positions, inv_freq), rtol=1e-5, atol=1e-5)
    # the pair (0, half) turns, as transformers' rotate_half does; (0, 1) is not a pair
    angle = positions[:, None] * inv_freq[None, 0]
    np.testing.assert_allclose(y[:, 0], (x[:, 0] * np.cos(angle[:, 0]) - x[:, 32] * np.sin(angle[:, 0])), atol=1e-4)


@pytest.mark.parametrize("tokens", [2, 11])
def test_gelu_tanh_mul(tokens, rng):
    gate = (rng.standard_normal((tokens, 256)) * 4).astype(np.float32)
    gate[0, :4] = [-60.0, 60.0, 0.0, -1e-3]             # saturation both ways, and zero
    up = rng.standard_normal((tokens, 256)).astype(np.float32)
    out = np.empty_like(gate)
    gelu_tanh_mul(gate, up, out)
    np.testing.assert_allclose(out, R.gelu_tanh_mul(gate, up), rtol=2e-6, atol=2e-6)


def test_head_rms_norm_and_bias(rng):
    heads, hd = 4, 256
    x = (rng.standard_normal((3, heads * hd)) * 3).astype(np.float32)
    weight = (1 + 0.1 * rng.standard_normal(hd)).astype(np.float32)
    y = x.copy()
    head_rms_norm(y, heads, hd, weight, 1e-6)
    np.testing.assert_allclose(y, R.head_rms_norm(x, heads, hd, weight, 1e-6), rtol=2e-6, atol=2e-6)
    bias = rng.standard_normal(heads * hd).astype(np.float32)
    add_bias(y, bias)
    np.testing.assert_allclose(y, R.head_rms_norm(x, heads, hd, weight, 1e-6) + bias, rtol=2e-6, atol=2e-6)


def _cache_for(k, v, table, kv_heads, hd, bs, num_blocks):
    k_cache = np.zeros((num_blocks, kv_heads, hd, bs), np.float32)
    v_cache = np.zeros((num_blocks, kv_heads, bs, hd), np.float32)
    slots = np.array([table[p // bs] * bs + p % bs for p in range(k.shape[0])], np.int32)
    write_kv(k, v, slots, k_cache, v_cache)
    return k_cache, v_cache


@pytest.mark.parametrize("window", [1, 16, 37, 100, 512])
@pytest.mark.parametrize("head_dim", [64, 256])
def test_sliding_window_attention(window, head_dim, rng):
    """Queries at several positions (before the window fills, exactly at it, far past it), a
    shuffled block table, against dense windowed attention."""
    heads, kv_heads, bs, n = 4, 1, 16, 300
    num_blocks = n // bs + 2
    table = rng.permutation(num_blocks).astype(np.int32)
    q_all = rng.standard_normal((n, heads * head_dim)).astype(np.float32)
    k = rng.standard_normal((n, kv_heads * head_dim)).astype(np.float32)
    v = rng.standard_normal((n, kv_heads * head_dim)).astype(np.float32)
    k_cache, v_cache = _cache_for(k, v, table, kv_heads, head_dim, bs, num_blocks)
    positions = np.array([0, 5, 15, 16, 36, 37, 38, 99, 100, 101, 250, 299], np.int32)
    q = q_all[positions]
    out = np.empty_like(q)
    scale = 1.0 / 16
    paged_attention_window(q, k_cache, v_cache, table[None, :], np.zeros(len(positions), np.int32), positions,
                           scale, window, out)
    ref = R.causal_attention(q, k, v, heads, kv_heads, head_dim, positions, scale, window)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)
    if window >= n:                                  # a window past the context is full attention
        full = np.empty_like(q)
        paged_attention(q, k_cache, v_cache, table[None, :], np.zeros(len(positions), np.int32), positions,
                        scale, full)
        np.testing.assert_allclose(out, full, rtol=0, atol=0)


def test_sliding_window_never_reads_blocks_before_the_window(rng):
    """Blocks wholly before the window may hold anything (freed, reused by another sequence):
    NaN there must not reach the output."""
    heads, kv_heads, hd, bs, n, window = 2, 1, 64, 16, 200, 64
    num_blocks = n // bs + 1
    table = np.arange(num_blocks, dtype=np.int32)
    k = rng.standard_normal((n, hd)).astype(np.float32)
    v = rng.standard_normal((n, hd)).astype(np.float32)
    k_cache, v_cache = _cache_for(k, v, table, kv_heads, hd, bs, num_blocks)
    pos = n - 1
    first_block = (pos + 1 - window) // bs
    k_cache[:first_block] = np.nan
    v_cache[:first_block] = np.nan
    q = rng.standard_normal((1, heads * hd)).astype(np.float32)
    out = np.empty_like(q)
    paged_attention_window(q, k_cache, v_cache, table[None, :], np.zeros(1, np.int32), np.array([pos], np.int32),
                           0.125, window, out)
    assert np.isfinite(out).all()
    ref = R.causal_attention(q, k, v, heads, kv_heads, hd, np.array([pos]), 0.125, window)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)

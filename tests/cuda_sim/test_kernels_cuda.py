"""Each CUDA kernel against its NumPy reference (engine/kernels/reference.py, engine.quants),
under the CUDA simulator, on tiny random data."""
import numpy as np
import pytest
from gguf_factory import random_blocks
from numba import cuda

from engine.kernels import reference as R
from engine.kernels.cuda.attention import paged_attention, prefill_attention, query_tiles, write_kv
from engine.kernels.cuda.dequant import SUPPORTED as CUDA_TYPES
from engine.kernels.cuda.dequant import dequantize_row
from engine.kernels.cuda.matmul import matmul, matmul_add
from engine.kernels.cuda.ops import add_inplace, embed, gather_rows, rms_norm, rope, rope_tables, silu_mul
from engine.quants import QUANT_TYPES, dequantize

TYPES = sorted(CUDA_TYPES)                      # the CPU kernels have more (engine.kernels.ggml_types)
NAMES = [QUANT_TYPES[t].name for t in TYPES]


@pytest.mark.parametrize("ggml_type", TYPES, ids=NAMES)
def test_dequantize_row_is_bit_exact(ggml_type, rng):
    w = random_blocks(ggml_type, 2, 512, rng)
    out = np.empty(512, np.float32)
    dequantize_row(ggml_type, w[1], out)
    np.testing.assert_array_equal(out, dequantize(w, ggml_type)[1])


@pytest.mark.parametrize("ggml_type", TYPES, ids=NAMES)
@pytest.mark.parametrize("tokens", [1, 3])
def test_matmul(ggml_type, tokens, rng):
    N, K = 37, 256                                  # ragged rows: the last row group is partial
    w = random_blocks(ggml_type, N, K, rng)
    x = rng.standard_normal((tokens, K)).astype(np.float32)
    out = np.empty((tokens, N), np.float32)
    matmul(cuda.to_device(w), ggml_type, x, out)
    ref = R.matmul(w, ggml_type, x)
    np.testing.assert_allclose(out, ref, rtol=0, atol=2e-6 * np.abs(ref).max())


def test_matmul_add_over_several_token_passes(rng):
    """9 tokens: two passes of 8 (the second partial); matmul_add accumulates into out."""
    N, K, T = 11, 64, 9
    w = random_blocks(8, N, K, rng)
    x = rng.standard_normal((T, K)).astype(np.float32)
    residual = rng.standard_normal((T, N)).astype(np.float32)
    out = residual.copy()
    matmul_add(cuda.to_device(w), 8, x, out)
    ref = residual + R.matmul(w, 8, x)
    np.testing.assert_allclose(out, ref, rtol=0, atol=2e-6 * np.abs(ref).max())


def test_rms_norm_in_place(rng):
    x = rng.standard_normal((3, 96)).astype(np.float32) * 5
    weight = rng.standard_normal(96).astype(np.float32)
    out = np.empty_like(x)
    rms_norm(x, weight, 1e-5, out)
    np.testing.assert_allclose(out, R.rms_norm(x, weight, 1e-5), rtol=1e-5, atol=1e-6)
    d = cuda.to_device(x)
    rms_norm(d, weight, 1e-5, d)                     # in place, as the model uses it
    np.testing.assert_array_equal(d.copy_to_host(), out)


@pytest.mark.parametrize("rope_dim", [16, 8])
def test_rope(rope_dim, rng):
    heads, head_dim = 3, 16
    positions = np.array([0, 1, 7, 300, 4095], np.int32)
    inv_freq = 1.0 / 10000.0 ** (np.arange(0, rope_dim, 2) / rope_dim)
    x = rng.standard_normal((5, heads * head_dim)).astype(np.float32)
    cos = np.empty((5, rope_dim // 2), np.float32)
    sin = np.empty_like(cos)
    rope_tables(positions, inv_freq, cos, sin)
    ref_cos, ref_sin = R.rope_tables(positions, inv_freq)
    np.testing.assert_allclose(cos, ref_cos, atol=1e-7)
    np.testing.assert_allclose(sin, ref_sin, atol=1e-7)
    y = x.copy()
    rope(y, heads, head_dim, cos, sin)
    np.testing.assert_allclose(y, R.rope(x, heads, head_dim, positions, inv_freq), rtol=1e-5, atol=1e-5)
    unrotated = (slice(None), slice(None), slice(rope_dim, None))
    assert np.array_equal(y.reshape(5, heads, head_dim)[unrotated], x.reshape(5, heads, head_dim)[unrotated])


def test_silu_mul_and_add(rng):
    gate = (rng.standard_normal((3, 48)) * 8).astype(np.float32)
    gate[0, :4] = [-80.0, -30.0, 30.0, 80.0]
    up = rng.standard_normal((3, 48)).astype(np.float32)
    out = np.empty_like(gate)
    silu_mul(gate, up, out)
    np.testing.assert_allclose(out, R.silu_mul(gate, up), rtol=2e-6, atol=1e-6)
    x = up.copy()
    add_inplace(x, gate)
    np.testing.assert_array_equal(x, up + gate)


@pytest.mark.parametrize("ggml_type", [8, 3, 0], ids=["Q8_0", "Q4_1", "F32"])
def test_embedding_rows_and_gather(ggml_type, rng):
    table = random_blocks(ggml_type, 50, 64, rng)
    ids = np.array([0, 49, 7, 7], np.int32)
    out = np.empty((4, 64), np.float32)
    embed(ids, cuda.to_device(table), ggml_type, out)
    np.testing.assert_array_equal(out, dequantize(table, ggml_type)[ids])
    picked = np.empty((2, 64), np.float32)
    gather_rows(out, np.array([3, 1], np.int32), picked)
    np.testing.assert_array_equal(picked, out[[3, 1]])


def _paged_setup(rng, head_dim, kv_heads, block_size, lengths, n_blocks=8):
    """Two sequences' keys/values written through write_kv into shuffled blocks of a NaN-filled cache
    (reading an unwritten slot would poison the output)."""
    k_cache = np.full((n_blocks, kv_heads, head_dim, block_size), np.nan, np.float32)
    v_cache = np.full((n_blocks, kv_heads, block_size, head_dim), np.nan, np.float32)
    perm = rng.permutation(n_blocks).astype(np.int32)
    tables = np.stack([perm[:n_blocks // 2], perm[n_blocks // 2:]])
    keys = [rng.standard_normal((n, kv_heads * head_dim)).astype(np.float32) for n in lengths]
    values = [rng.standard_normal((n, kv_heads * head_dim)).astype(np.float32) for n in lengths]
    k_dev, v_dev = cuda.to_device(k_cache), cuda.to_device(v_cache)
    for s in range(2):
        positions = np.arange(lengths[s])
        slots = (tables[s, positions // block_size] * block_size + positions % block_size).astype(np.int32)
        write_kv(keys[s], values[s], slots, k_dev, v_dev)
    return k_dev, v_dev, tables, keys, values


def test_write_kv_layout(rng):
    k_dev, v_dev, tables, keys, values = _paged_setup(rng, 8, 2, 16, [20, 3])
    k_cache, v_cache = k_dev.copy_to_host(), v_dev.copy_to_host()
    p = 17                                               # sequence 0, second block, offset 1
    block = tables[0, 1]
    np.testing.assert_array_equal(k_cache[block, :, :, 1].reshape(-1), keys[0][p])
    np.testing.assert_array_equal(v_cache[block, :, 1, :].reshape(-1), values[0][p])


@pytest.mark.parametrize("head_dim,heads,kv_heads", [(16, 4, 2), (8, 3, 3)])
def test_decode_and_prefill_attention_over_paged_cache(head_dim, heads, kv_heads, rng):
    """Sequence 0 prefills 6 tokens after a 30-token prefix (tiles of 4 and 2, keys across two
    blocks); sequence 1 decodes one token at position 20. One batch, both kernels."""
    block_size = 16
    k_dev, v_dev, tables, keys, values = _paged_setup(rng, head_dim, kv_heads, block_size, [36, 21])
    positions = np.concatenate([np.arange(30, 36), [20]]).astype(np.int32)
    seq_ids = np.array([0] * 6 + [1], np.int32)
    q = rng.standard_normal((7, heads * head_dim)).astype(np.float32)
    ref = np.concatenate([
        R.causal_attention(q[:6], keys[0], values[0], heads, kv_heads, head_dim, positions[:6]),
        R.causal_attention(q[6:], keys[1], values[1], heads, kv_heads, head_dim, positions[6:])])
    tiles, singles = query_tiles(seq_ids, positions)
    assert tiles.tolist() == [[0, 4], [4, 2]] and singles.tolist() == [6]
    scale = 1 / np.sqrt(head_dim)
    out = np.full_like(q, np.nan)
    prefill_attention(q, k_dev, v_dev, tables, seq_ids, positions, scale, tiles, out)
    paged_attention(q, k_dev, v_dev, tables, seq_ids, positions, scale, out, singles)
    np.testing.assert_allclose(out, ref, rtol=0, atol=2e-6)
    every_row = np.empty_like(q)                          # the decode kernel alone handles any row too
    paged_attention(q, k_dev, v_dev, tables, seq_ids, positions, scale, every_row)
    np.testing.assert_allclose(every_row, ref, rtol=0, atol=2e-6)

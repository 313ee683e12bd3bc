"""Each CPU kernel against its NumPy reference on random data (engine/kernels/reference.py)."""
import numpy as np
import pytest
from gguf_factory import random_blocks
from numba import njit

from engine.kernels import reference as R
from engine.kernels.cpu.attention import paged_attention, write_kv
from engine.kernels.cpu.matmul import (
    OUTER_PRODUCT_GEMM,
    TOKEN_VECTOR_MIN_TOKENS,
    matmul,
)
from engine.kernels.cpu.matmul_f32 import (
    block_sums,
    matmul_rows_f32,
    matmul_tiles_f32,
    matmul_token_vectors_f32,
    token_block,
)
from engine.kernels.cpu.matmul_q8 import matmul_q8, quantize_rows
from engine.kernels.cpu.ops import add_inplace, embed, rms_norm, rope, rope_tables, silu_mul
from engine.kernels.ggml_types import INT8_ACTIVATION_TYPES, INT8_KERNEL_TYPES
from engine.kernels.simd import vexp, vload, vstore
from engine.quants import QUANT_TYPES, dequantize

TYPES = sorted(QUANT_TYPES)
NAMES = [QUANT_TYPES[t].name for t in TYPES]
QUANT_TYPES_BY_NAME = {q.name: t for t, q in QUANT_TYPES.items()}


def activations(rng, T, K, outliers=True):
    """Activations like a real hidden state: mostly small, a few channels 50x larger."""
    x = rng.standard_normal((T, K)).astype(np.float32)
    if outliers:
        x[:, rng.choice(K, size=max(1, K // 64), replace=False)] *= 50
    return x


@pytest.mark.parametrize("ggml_type", TYPES, ids=NAMES)
@pytest.mark.parametrize("tokens", [1, 2, 3, 4, 9])
def test_matmul_float32_activations(ggml_type, tokens, rng):
    N, K = 37, 768                      # a ragged row count: tiles of 4 must handle the tail
    w = random_blocks(ggml_type, N, K, rng)
    x = activations(rng, tokens, K)
    out = np.empty((tokens, N), np.float32)
    matmul(w, ggml_type, x, out, False)
    ref = R.matmul(w, ggml_type, x)
    np.testing.assert_allclose(out, ref, rtol=0, atol=2e-6 * np.abs(ref).max())


@pytest.mark.parametrize("ggml_type", TYPES, ids=NAMES)
@pytest.mark.parametrize("tokens", [1, 6, 17])
def test_matmul_token_vectors(ggml_type, tokens, rng):
    """The outer-product GEMM (the batch path on hosts without AVX-512), called directly so that
    every host tests it: a ragged row count (a last tile of one row), token counts around its
    vectors of sixteen."""
    N, K = 37, 768
    w = random_blocks(ggml_type, N, K, rng)
    x = activations(rng, tokens, K)
    out = np.empty((tokens, N), np.float32)
    matmul_token_vectors_f32(w, ggml_type, x, out)
    ref = R.matmul(w, ggml_type, x)
    np.testing.assert_allclose(out, ref, rtol=0, atol=2e-6 * np.abs(ref).max())


@pytest.mark.parametrize("kernel", [matmul_token_vectors_f32, matmul_tiles_f32], ids=["token_vectors", "tiles"])
def test_a_tokens_batch_product_does_not_depend_on_the_batch_around_it(kernel, rng):
    """Bit for bit: a sequence's logits must not change with what else a step batches with it."""
    ggml_type = QUANT_TYPES_BY_NAME["Q4_K"]
    w = random_blocks(ggml_type, 40, 512, rng)
    x = activations(rng, 37, 512)
    together = np.empty((37, 40), np.float32)
    kernel(w, ggml_type, x, together)
    for lo, hi in ((0, 6), (5, 9), (12, 13), (3, 37), (16, 33)):
        alone = np.empty((hi - lo, 40), np.float32)
        kernel(w, ggml_type, np.ascontiguousarray(x[lo:hi]), alone)
        np.testing.assert_array_equal(alone, together[lo:hi])


def test_the_tiles_over_several_token_blocks_match_numpy_and_each_token_alone(rng):
    """More tokens than one L2-sized token block (matmul_f32.token_block), the last block ragged and
    not a multiple of four: every token still gets the reference product, bit for bit its own."""
    ggml_type = QUANT_TYPES_BY_NAME["Q4_K"]
    N, K = 37, 4096
    tokens = 2 * token_block(K) + 3
    assert token_block(K) < 64 and token_block(K) % 4 == 0
    w = random_blocks(ggml_type, N, K, rng)
    x = activations(rng, tokens, K)
    out = np.empty((tokens, N), np.float32)
    matmul_tiles_f32(w, ggml_type, x, out)
    ref = R.matmul(w, ggml_type, x)
    np.testing.assert_allclose(out, ref, rtol=0, atol=2e-6 * np.abs(ref).max())
    for t in (0, token_block(K) - 1, token_block(K), tokens - 1):
        alone = np.empty((1, N), np.float32)
        matmul_tiles_f32(w, ggml_type, np.ascontiguousarray(x[t:t + 1]), alone)
        np.testing.assert_array_equal(alone[0], out[t])


@pytest.mark.parametrize("ggml_type", TYPES, ids=NAMES)
def test_row_products_of_a_few_tokens_are_the_tiles_bit_for_bit(ggml_type, rng):
    """Several tokens on the row products (four per decoded block: small batches, speculative
    verification) get the tiles' arithmetic exactly, so a token's logits do not depend on which
    of the two paths matmul.F32_ROW_TOKENS sends its step to."""
    N, K = 37, 768
    w = random_blocks(ggml_type, N, K, rng)
    for tokens in (2, 3, 4, 5, 7):
        x = activations(rng, tokens, K)
        rows, tiles = np.empty((tokens, N), np.float32), np.empty((tokens, N), np.float32)
        matmul_rows_f32(w, ggml_type, x, block_sums(x), rows)
        matmul_tiles_f32(w, ggml_type, x, tiles)
        np.testing.assert_array_equal(rows, tiles)


@pytest.mark.parametrize("tokens", [TOKEN_VECTOR_MIN_TOKENS, 40])
def test_batches_take_the_outer_product_on_hosts_without_avx512(tokens, rng):
    ggml_type = QUANT_TYPES_BY_NAME["Q8_0"]
    w = random_blocks(ggml_type, 48, 256, rng)
    x = activations(rng, tokens, 256)
    dispatched, outer, tiles = (np.empty((tokens, 48), np.float32) for _ in range(3))
    matmul(w, ggml_type, x, dispatched, False)
    matmul_token_vectors_f32(w, ggml_type, x, outer)
    matmul_tiles_f32(w, ggml_type, x, tiles)
    np.testing.assert_array_equal(dispatched, outer if OUTER_PRODUCT_GEMM else tiles)


def test_quantize_rows_per_16_values(rng):
    x = activations(rng, 3, 256)
    qx, dx, xqs, dx8, xsum4 = quantize_rows(x)
    xq = (qx.reshape(3, -1, 16).astype(np.float64) * dx[:, :, None]).reshape(3, 256)
    assert np.abs(qx.astype(int)).max() == 127
    np.testing.assert_allclose(dx, np.abs(x.reshape(3, -1, 16)).max(axis=2) / 127, rtol=1e-6)
    assert np.all(np.abs(xq - x) <= dx.repeat(16, axis=1) / 2 * 1.0001)
    np.testing.assert_allclose(xqs, xq.reshape(3, -1, 16).sum(axis=2), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(dx8, dx.repeat(4, axis=1))          # a lane per 4 values
    np.testing.assert_array_equal(xsum4, qx.astype(np.int32).reshape(3, -1, 4).sum(axis=2))


@pytest.mark.parametrize("ggml_type", INT8_KERNEL_TYPES, ids=[QUANT_TYPES[t].name for t in INT8_KERNEL_TYPES])
@pytest.mark.parametrize("tokens", [1, 2])
def test_matmul_int8_activations_is_exactly_w_dot_quantized_x(ggml_type, tokens, rng):
    """The int8 kernel computes W . xq with xq the per-16 int8 quantization of x, nothing worse:
    outlier channels make the two halves of a block differ, which a lane mix-up would show. The
    fast mode's dispatch reaches it for INT8_ACTIVATION_TYPES (the same product, below)."""
    N, K = 21, 512
    w = random_blocks(ggml_type, N, K, rng)
    x = activations(rng, tokens, K)
    out = np.empty((tokens, N), np.float32)
    act = quantize_rows(x)
    matmul_q8(w, ggml_type, act, out)
    qx, dx = act[:2]
    if ggml_type in INT8_ACTIVATION_TYPES:
        dispatched = np.empty_like(out)
        matmul(w, ggml_type, x, dispatched, True)
        np.testing.assert_array_equal(dispatched, out)
    xq = (qx.reshape(tokens, -1, 16).astype(np.float64) * dx[:, :, None]).reshape(tokens, K)
    ref = xq @ dequantize(w, ggml_type).astype(np.float64).T
    np.testing.assert_allclose(out, ref, rtol=0, atol=2e-6 * np.abs(ref).max())
    exact = R.matmul(w, ggml_type, x)
    assert np.abs(out - exact).max() < 0.02 * np.abs(exact).max()     # and close to the exact product


FLOAT_FALLBACK = [t for t in TYPES if t not in INT8_ACTIVATION_TYPES]


@pytest.mark.parametrize("ggml_type", FLOAT_FALLBACK, ids=[QUANT_TYPES[t].name for t in FLOAT_FALLBACK])
def test_int8_mode_computes_types_without_int8_kernel_in_float(ggml_type, rng):
    """Float weights, and the types whose int8 kernel does not pay, take the exact float32 path."""
    w = random_blocks(ggml_type, 8, 256, rng)
    x = activations(rng, 1, 256)
    out = np.empty((1, 8), np.float32)
    matmul(w, ggml_type, x, out, True)
    ref = R.matmul(w, ggml_type, x)
    np.testing.assert_allclose(out, ref, rtol=0, atol=2e-6 * np.abs(ref).max())


def test_rms_norm(rng):
    x = activations(rng, 5, 576)
    weight = rng.standard_normal(576).astype(np.float32)
    out = np.empty_like(x)
    rms_norm(x, weight, 1e-5, out)
    np.testing.assert_allclose(out, R.rms_norm(x, weight, 1e-5), rtol=1e-5, atol=1e-6)
    rms_norm(x, weight, 1e-5, x)                                     # in place, as the model uses it
    np.testing.assert_allclose(x, out, rtol=0, atol=0)


@pytest.mark.parametrize("rope_dim", [64, 32])
def test_rope(rope_dim, rng):
    heads, head_dim = 3, 64
    positions = np.array([0, 1, 7, 300, 4095], np.int32)
    inv_freq = 1.0 / 10000.0 ** (np.arange(0, rope_dim, 2) / rope_dim)
    x = rng.standard_normal((5, heads * head_dim)).astype(np.float32)
    cos = np.empty((5, rope_dim // 2), np.float32)
    sin = np.empty_like(cos)
    rope_tables(positions, inv_freq, cos, sin)
    y = x.copy()
    rope(y, heads, head_dim, cos, sin)
    np.testing.assert_allclose(y, R.rope(x, heads, head_dim, positions, inv_freq), rtol=1e-5, atol=1e-5)
    assert np.array_equal(y[:, rope_dim:head_dim], x[:, rope_dim:head_dim])   # unrotated tail


def test_silu_mul_and_add(rng):
    gate = (rng.standard_normal((4, 1536)) * 8).astype(np.float32)
    gate[0, :4] = [-200.0, -88.0, 88.0, 200.0]                       # exp range limits
    up = rng.standard_normal((4, 1536)).astype(np.float32)
    out = np.empty_like(gate)
    silu_mul(gate, up, out)
    np.testing.assert_allclose(out, R.silu_mul(gate, up), rtol=2e-6, atol=1e-6)
    x = up.copy()
    add_inplace(x, gate)
    np.testing.assert_array_equal(x, up + gate)


@pytest.mark.parametrize("ggml_type", [8, 3, 6, 30, 0], ids=["Q8_0", "Q4_1", "Q5_0", "BF16", "F32"])
def test_embedding_rows(ggml_type, rng):
    table = random_blocks(ggml_type, 50, 256, rng)
    ids = np.array([0, 49, 7, 7], np.int32)
    out = np.empty((4, 256), np.float32)
    embed(ids, table, ggml_type, out)
    np.testing.assert_array_equal(out, dequantize(table, ggml_type)[ids])


@njit
def _vexp_all(x, out):
    for i in range(0, x.shape[0], 16):
        vstore(out, i, vexp(vload(x, i)))


def test_vector_exp_accuracy():
    x = np.linspace(-87, 88, 16 * 4000).astype(np.float32)
    out = np.empty_like(x)
    _vexp_all(x, out)
    np.testing.assert_allclose(out, np.exp(x.astype(np.float64)), rtol=3e-7)


@pytest.mark.parametrize("kv_dtype", ["float32", "float16"])
@pytest.mark.parametrize("head_dim,heads,kv_heads,block_size", [(64, 9, 3, 16), (128, 4, 4, 32), (80, 4, 2, 16)])
def test_paged_attention_mixed_prefill_and_decode(head_dim, heads, kv_heads, block_size, kv_dtype, rng):
    """Two sequences in shuffled blocks: one prefills 5 tokens after a 70-token prefix, the other
    decodes one token. Unwritten cache slots hold NaN: reading one would poison the output. A
    float16 cache (uint16 bits) matches the reference on the keys and values rounded to halves."""
    n_blocks = 16
    storage = np.uint16 if kv_dtype == "float16" else np.float32
    nan = np.array(np.nan, np.float16).view(np.uint16) if kv_dtype == "float16" else np.nan
    k_cache = np.full((n_blocks, kv_heads, head_dim, block_size), nan, storage)
    v_cache = np.full((n_blocks, kv_heads, block_size, head_dim), nan, storage)
    perm = rng.permutation(n_blocks).astype(np.int32)
    tables = np.stack([perm[:8], perm[8:]])
    lengths = [75, 34]
    keys = [rng.standard_normal((n, kv_heads * head_dim)).astype(np.float32) for n in lengths]
    values = [rng.standard_normal((n, kv_heads * head_dim)).astype(np.float32) for n in lengths]
    for s in range(2):
        slots = np.array([tables[s, p // block_size] * block_size + p % block_size
                          for p in range(lengths[s])], np.int32)
        write_kv(keys[s], values[s], slots, k_cache, v_cache)
    if kv_dtype == "float16":                  # what the cache holds: each value rounded to a half
        keys = [k.astype(np.float16).astype(np.float32) for k in keys]
        values = [v.astype(np.float16).astype(np.float32) for v in values]
        first_key = k_cache[tables[0, 0], 0, :, 0]       # position 0, KV head 0: rounded as NumPy rounds
        np.testing.assert_array_equal(first_key.view(np.float16).astype(np.float32), keys[0][0, :head_dim])
    q_positions = [np.arange(70, 75), np.array([33])]
    q = rng.standard_normal((6, heads * head_dim)).astype(np.float32)
    seq_ids = np.array([0] * 5 + [1], np.int32)
    out = np.empty_like(q)
    paged_attention(q, k_cache, v_cache, tables, seq_ids, np.concatenate(q_positions).astype(np.int32),
                    1 / np.sqrt(head_dim), out)
    ref = np.concatenate([
        R.causal_attention(q[:5], keys[0], values[0], heads, kv_heads, head_dim, q_positions[0]),
        R.causal_attention(q[5:], keys[1], values[1], heads, kv_heads, head_dim, q_positions[1])])
    np.testing.assert_allclose(out, ref, rtol=0, atol=2e-6)

"""The sentence encoder on the engine's kernels: each new kernel against NumPy, the whole model
against sentence-transformers' embeddings (tests/golden/minilm)."""
import json

import numpy as np
import pytest
from conftest import GOLDEN

from engine.encoder import SentenceEncoder
from engine.kernels import reference as R
from engine.kernels.cpu.encoder_ops import add_bias, encoder_attention, gelu_inplace, layer_norm, mean_pool_normalize
from engine.safetensors_file import SafetensorsError, SafetensorsFile


@pytest.fixture(scope="module")
def encoder():
    return SentenceEncoder.load()


@pytest.fixture(scope="module")
def minilm_reference():
    return json.loads((GOLDEN / "minilm" / "minilm_reference.json").read_text())


def test_input_ids_equal_the_reference_with_truncation_at_256(encoder, minilm_reference):
    ids = encoder.token_ids(minilm_reference["sentences"])
    assert ids == minilm_reference["input_ids"]
    assert max(len(i) for i in ids) == 256 and ids[5] == [101, 102]          # the empty sentence


def test_embeddings_match_sentence_transformers(encoder, minilm_reference):
    ours = encoder.embed(minilm_reference["sentences"])
    theirs = np.load(GOLDEN / "minilm" / "minilm_embeddings.npy")
    cosine = (ours * theirs).sum(axis=1) / np.linalg.norm(theirs, axis=1)
    assert cosine.min() >= 0.999, cosine
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, rtol=1e-5)


def test_batching_does_not_change_an_embedding(encoder, minilm_reference):
    sentences = minilm_reference["sentences"]
    together = encoder.embed(sentences)
    alone = np.stack([encoder.embed([s])[0] for s in sentences])
    np.testing.assert_allclose(together, alone, atol=2e-6)
    small_batches = encoder.embed(sentences, max_batch_tokens=64)
    np.testing.assert_allclose(small_batches, together, atol=2e-6)


def test_layer_norm_and_bias(rng):
    x = (rng.standard_normal((7, 384)) * 3 + 1).astype(np.float32)
    w, b = rng.standard_normal(384).astype(np.float32), rng.standard_normal(384).astype(np.float32)
    out = np.empty_like(x)
    layer_norm(x, w, b, 1e-12, out)
    np.testing.assert_allclose(out, R.layer_norm(x, w, b, 1e-12), rtol=1e-5, atol=1e-5)
    y = x.copy()
    add_bias(y, b)
    np.testing.assert_array_equal(y, x + b)


def test_gelu_uses_an_exact_erf(rng):
    x = np.concatenate([rng.standard_normal(1600) * 4, [-12.0, -6.0, -1e-3, 0.0, 1e-3, 6.0, 12.0] + [0.0] * 9])
    x = x.astype(np.float32).reshape(-1, 16)
    y = x.copy()
    gelu_inplace(y)
    np.testing.assert_allclose(y, R.gelu(x), rtol=1e-6, atol=1e-7)


def test_encoder_attention_and_pooling(rng):
    lengths = [1, 17, 40]
    seq_starts = np.array([0, 1, 18, 58], np.int32)
    q, k, v = (rng.standard_normal((58, 12 * 32)).astype(np.float32) for _ in range(3))
    out = np.empty_like(q)
    encoder_attention(q, k, v, seq_starts, 12, 1 / np.sqrt(32), out)
    np.testing.assert_allclose(out, R.bidirectional_attention(q, k, v, seq_starts, 12), atol=2e-6)
    pooled = np.empty((3, 384), np.float32)
    mean_pool_normalize(out, seq_starts, pooled)
    np.testing.assert_allclose(pooled, R.mean_pool_normalize(out, seq_starts), atol=1e-6)
    assert sum(lengths) == 58


def test_safetensors_errors(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\xff" * 4)
    with pytest.raises(SafetensorsError, match="not a safetensors file"):
        SafetensorsFile(bad)
    bad.write_bytes((10**9).to_bytes(8, "little") + b"{}")
    with pytest.raises(SafetensorsError, match="runs past the end"):
        SafetensorsFile(bad)

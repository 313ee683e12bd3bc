"""Each architecture through the whole model, on tiny random GGUF files, against the NumPy reference
(engine.kernels.reference.forward follows the architecture's switches step by step)."""
import numpy as np
import pytest
from gguf_factory import write_tiny_llama
from test_model_parity import last_logits

from engine.architectures import ARCHITECTURES
from engine.kernels import reference as R
from engine.model import DecoderModel, ForwardBatch
from engine.model_config import ModelConfig

TINY = {
    "llama": {},
    "qwen2": {"architecture": "qwen2"},
    # six layers: five local (window 8) then one global; head_dim 64 != hidden / heads as in Gemma
    "gemma3": {"architecture": "gemma3", "layers": 6, "hidden": 128, "heads": 4, "kv_heads": 1, "head_dim": 64,
               "sliding_window": 8, "rope_base": 1e6},
}


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("arch")
    return {name: DecoderModel.load(write_tiny_llama(folder / f"{name}.gguf", matrix_type="Q8_0", **kwargs))
            for name, kwargs in TINY.items()}


def test_every_supported_architecture_has_a_tiny_model():
    """mistral is llama's layout; the MoE architecture (qwen2moe) has its own in test_moe.py."""
    assert set(TINY) | {"mistral", "qwen2moe"} == set(ARCHITECTURES)


@pytest.mark.parametrize("name", sorted(TINY))
def test_tiny_model_matches_numpy_reference(name, tiny_models):
    """Prefill then one decode step, past the sliding window for Gemma 3 (21 tokens, window 8)."""
    model = tiny_models[name]
    ids = [5, 17, 33, 2, 60, 9, 11, 40, 41, 42, 3, 7, 19, 23, 29, 31, 37, 43, 47, 53, 59]
    ref = R.forward(model, np.array(ids))
    got = last_logits(model, ids)
    np.testing.assert_allclose(got, ref[-1], rtol=0, atol=2e-5 * np.abs(ref).max())


def test_gemma3_window_changes_the_output(tiny_models, tmp_path):
    """The window is not a no-op: the same weights with a window past the sequence differ."""
    ids = list(range(3, 24))
    windowed = last_logits(tiny_models["gemma3"], ids)
    wide = DecoderModel.load(write_tiny_llama(tmp_path / "wide.gguf", matrix_type="Q8_0",
                                            **(TINY["gemma3"] | {"sliding_window": 64})))
    assert np.abs(windowed - last_logits(wide, ids)).max() > 1e-3


def test_gemma3_decode_steps_across_the_window_match_prefill(tiny_models):
    """Token by token (each a decode step) gives the logits a single prefill gives, at every position."""
    model = tiny_models["gemma3"]
    ids = np.arange(4, 30, dtype=np.int32)
    ref = R.forward(model, ids)
    kv = model.new_kv_cache(num_blocks=4, block_size=16)
    table = np.arange(4, dtype=np.int32).reshape(1, 4)
    for pos, token in enumerate(ids):
        p = np.array([pos], np.int32)
        batch = ForwardBatch(np.array([token], np.int32), p, np.zeros(1, np.int32), table, p.copy(),
                             np.zeros(1, np.int32))
        np.testing.assert_allclose(model.forward(batch, kv)[0], ref[pos], rtol=0, atol=2e-5 * np.abs(ref).max())


def test_config_of_each_tiny_architecture(tiny_models):
    gemma = tiny_models["gemma3"].config
    assert gemma.layer_windows == (8, 8, 8, 8, 8, 0)
    assert gemma.local_rope_theta == 10000.0 and gemma.head_dim == 64
    assert abs(gemma.attention_scale - 1 / 8) < 1e-12
    assert tiny_models["gemma3"].layer_rope.tolist() == [1, 1, 1, 1, 1, 0]
    assert tiny_models["qwen2"].config.layer_windows == (0, 0)
    assert np.abs(tiny_models["qwen2"].qkv_bias).max() > 0


def test_unknown_architecture_is_refused_by_name(tmp_path):
    path = write_tiny_llama(tmp_path / "phi.gguf", architecture="phi3")
    from engine.gguf_file import GGUFError, GGUFFile
    with pytest.raises(GGUFError, match="architecture 'phi3' is not supported"):
        ModelConfig.from_gguf(GGUFFile.open(path))

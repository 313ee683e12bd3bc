"""Loading GGUF files: metadata, zero-copy tensors, and clear errors for bad files."""
import numpy as np
import pytest
from gguf_factory import write_tiny_llama

from engine.gguf_file import GGUFError, GGUFFile
from engine.model import DecoderModel
from engine.model_config import ModelConfig


def test_smollm2_config_from_metadata(smollm2_path):
    cfg = ModelConfig.from_gguf(GGUFFile.open(smollm2_path))
    assert (cfg.num_layers, cfg.hidden_size, cfg.intermediate_size) == (30, 576, 1536)
    assert (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.vocab_size) == (9, 3, 64, 49152)
    assert cfg.rope_theta == 100000.0 and cfg.tied_embeddings and cfg.context_length == 8192


def test_weights_are_views_of_the_file_in_their_own_type(llm):
    model = llm.model
    buffer = model.gguf._buffer
    for tensor in (model.embedding, model.head):
        assert np.shares_memory(tensor.data, buffer) and tensor.type_name == "Q8_0"
    assert all(np.shares_memory(w, buffer) for w in model.layer_weights)
    assert sum(w.nbytes for w in model.layer_weights) < 70e6       # Q4_1, not float32 (430 MB)


def test_fingerprint_is_stable_and_distinguishes_models(smollm2_path, tiny_model_dir):
    a = GGUFFile.open(smollm2_path).fingerprint()
    assert a == GGUFFile.open(smollm2_path).fingerprint()
    tiny = write_tiny_llama(tiny_model_dir / "fp.gguf")
    assert GGUFFile.open(tiny).fingerprint() != a


def test_decode_weight_bytes_count_the_embedding_table_only_where_it_is_the_head(tiny_model_dir):
    for tied in (True, False):
        gguf = GGUFFile.open(str(write_tiny_llama(tiny_model_dir / f"bytes_{tied}.gguf", tied=tied)))
        every = sum(gguf.tensor(name).data.nbytes for name in gguf.tensor_infos)
        table = gguf.tensor("token_embd.weight").data.nbytes
        assert gguf.decode_weight_bytes() == (every if tied else every - table)
        assert gguf.has_tensor("output.weight") != tied


def test_not_a_gguf_file(tmp_path):
    p = tmp_path / "x.gguf"
    p.write_bytes(b"PK\x03\x04 definitely a zip")
    with pytest.raises(GGUFError, match="not a GGUF file"):
        GGUFFile.open(p)


def test_missing_file():
    with pytest.raises(GGUFError, match="cannot open model file"):
        GGUFFile.open("/nonexistent/model.gguf")


def test_truncated_file(tiny_model_dir, tmp_path):
    full = write_tiny_llama(tiny_model_dir / "trunc_src.gguf").read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(full[: len(full) - 1000])
    with pytest.raises(GGUFError, match="truncated"):
        DecoderModel.load(cut)
    cut.write_bytes(full[:100])
    with pytest.raises(GGUFError, match="truncated"):
        GGUFFile.open(cut)

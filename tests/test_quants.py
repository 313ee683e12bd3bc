"""Every GGML type: our NumPy reference and our numba dequantizer equal gguf-py bit for bit."""
import gguf
import numpy as np
import pytest
from gguf_factory import GGUF_QUANTIZED, random_block_bytes, random_blocks

from engine.kernels.cpu.dequant import dequantize_row
from engine.quants import QUANT_TYPES, dequantize, quant_type

TYPES = sorted(QUANT_TYPES)


def sample_rows(ggml_type, rows, cols, rng):
    """random_blocks; where those are gguf-py's quantizer output, as many rows of random bytes too
    (a quantizer need not produce every bit pattern a file can hold)."""
    data = random_blocks(ggml_type, rows, cols, rng)
    if QUANT_TYPES[ggml_type].name in GGUF_QUANTIZED:
        data = np.concatenate([data, random_block_bytes(ggml_type, rows, cols, rng)])
    return data


@pytest.mark.parametrize("ggml_type", TYPES, ids=[QUANT_TYPES[t].name for t in TYPES])
def test_reference_dequantize_matches_gguf_bit_for_bit(ggml_type, rng):
    data = sample_rows(ggml_type, 6, 512, rng)
    ours = dequantize(data, ggml_type)
    theirs = gguf.quants.dequantize(data, gguf.GGMLQuantizationType(ggml_type)).reshape(ours.shape)
    assert ours.dtype == np.float32 and ours.shape == (data.shape[0], 512)
    np.testing.assert_array_equal(ours.view(np.uint32), theirs.astype(np.float32).view(np.uint32))


@pytest.mark.parametrize("ggml_type", TYPES, ids=[QUANT_TYPES[t].name for t in TYPES])
def test_numba_dequantize_row_matches_reference_bit_for_bit(ggml_type, rng):
    data = sample_rows(ggml_type, 3, 768, rng)
    ref = dequantize(data, ggml_type)
    for r in range(data.shape[0]):
        out = np.empty(768, np.float32)
        dequantize_row(ggml_type, data[r], out)
        np.testing.assert_array_equal(out.view(np.uint32), ref[r].view(np.uint32))


def test_unsupported_type_is_a_clear_error():
    with pytest.raises(ValueError, match="IQ2_XXS is not supported"):
        quant_type(int(gguf.GGMLQuantizationType.IQ2_XXS))


def test_row_length_must_be_whole_blocks():
    with pytest.raises(ValueError, match="not a multiple of 256"):
        quant_type(int(gguf.GGMLQuantizationType.Q4_K)).row_bytes(300)

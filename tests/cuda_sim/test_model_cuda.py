"""A whole forward of a tiny random Llama (written as a GGUF) on the CUDA backend against the CPU
backend, through the paged KV cache, under the CUDA simulator. Tolerances are float32 ones: the two
backends add the same products in different orders."""
import numpy as np
import pytest
from gguf_factory import write_tiny_llama

from engine.cuda_model import CudaLlamaModel
from engine.gguf_file import GGUFError
from engine.model import DecoderModel, ForwardBatch

BLOCK = 16


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    path = write_tiny_llama(tmp_path_factory.mktemp("cuda") / "tiny.gguf", vocab=300, hidden=64, ffn=128,
                            layers=2, heads=4, kv_heads=2, matrix_type="Q4_1", embedding_type="Q8_0", seed=3)
    return DecoderModel.load(path), CudaLlamaModel.load(path)


def _batch(token_ids, start, table):
    n = len(token_ids)
    positions = np.arange(start, start + n, dtype=np.int32)
    slots = (table[positions // BLOCK] * BLOCK + positions % BLOCK).astype(np.int32)
    return ForwardBatch(np.array(token_ids, np.int32), positions, np.zeros(n, np.int32), table.reshape(1, -1),
                        slots, np.array([n - 1], np.int32))


def _assert_close(gpu, cpu):
    np.testing.assert_allclose(gpu, cpu, rtol=0, atol=1e-5 * np.abs(cpu).max())


def test_prefill_then_decode_matches_cpu(models):
    cpu, gpu = models
    table = np.array([2, 0], np.int32)
    cpu_kv, gpu_kv = cpu.new_kv_cache(3, BLOCK), gpu.new_kv_cache(3, BLOCK)
    prompt = [5, 17, 200, 42, 9, 33, 7]
    _assert_close(gpu.forward(_batch(prompt, 0, table), gpu_kv), cpu.forward(_batch(prompt, 0, table), cpu_kv))
    step = _batch([77], len(prompt), table)
    _assert_close(gpu.forward(step, gpu_kv), cpu.forward(step, cpu_kv))
    k, v = gpu_kv.read_block(2)                     # the device pool holds the CPU's keys and values
    np.testing.assert_allclose(k, cpu_kv.k[:, 2], atol=1e-5)
    np.testing.assert_allclose(v, cpu_kv.v[:, 2], atol=1e-5)


def test_imported_prefix_block_then_prefill_chunk_and_device_sampling(models):
    """A full block computed elsewhere (here: by the CPU) arrives as raw bytes, as from the Redis
    store; the GPU prefills the next tokens across the block boundary, then decodes on the device."""
    cpu, gpu = models
    table = np.array([1, 3], np.int32)
    cpu_kv, gpu_kv = cpu.new_kv_cache(4, BLOCK), gpu.new_kv_cache(4, BLOCK)
    prefix = [(7 * i + 3) % 300 for i in range(BLOCK)]
    cpu.forward_hidden(_batch(prefix, 0, table), cpu_kv)
    gpu_kv.write_block(1, *cpu_kv.read_block(1))
    chunk = [11, 250, 4]
    _assert_close(gpu.forward(_batch(chunk, BLOCK, table), gpu_kv), cpu.forward(_batch(chunk, BLOCK, table), cpu_kv))
    step = _batch([99], BLOCK + len(chunk), table)
    expected = cpu.forward(step, cpu_kv)[0]
    ids, logprobs = gpu.sample(step, gpu_kv, np.zeros(1, np.float32), np.zeros(1, np.int32), np.zeros(1))
    assert ids.tolist() == [int(np.argmax(expected))]
    shifted = expected.astype(np.float64) - expected.max()
    np.testing.assert_allclose(logprobs[0], shifted[ids[0]] - np.log(np.exp(shifted).sum()), atol=1e-4)


def test_engine_on_cuda_generates_the_cpu_tokens(models, monkeypatch):
    """LLMEngine unchanged on top: two requests batched, prefill then decode steps whose tokens are
    chosen on the device (greedy, and a seeded temperature draw), against the CPU engine."""
    from engine.llm_engine import EngineConfig, LLMEngine
    from engine.sampling import GREEDY, SamplingParams
    from engine.sequence import RequestOptions
    from engine.stopping import StoppingCriteria
    from engine.tokenizer import Tokenizer

    cpu, gpu = models
    tokenizer = Tokenizer.from_gguf(cpu.gguf)
    stopping = StoppingCriteria(3, ignore_eos=True)
    requests = {"greedy": ([5, 17, 200, 42], RequestOptions(GREEDY, stopping, logprobs=True)),
                "seeded": ([9, 33, 7, 12], RequestOptions(SamplingParams(temperature=2.0, seed=7), stopping))}
    def no_logits(*args):
        raise AssertionError("these settings sample on the device: no logits should be copied out")
    monkeypatch.setattr(gpu, "forward", no_logits)
    outputs = {}
    for name, model in (("cpu", cpu), ("cuda", gpu)):
        engine = LLMEngine(model, tokenizer, EngineConfig(num_kv_blocks=4, max_num_seqs=2))
        for rid, (prompt, options) in requests.items():
            engine.add_request(rid, prompt, options)
        events = {rid: [] for rid in requests}
        while engine.has_work():
            for out in engine.step():
                events[out.request_id].extend(out.events)
        outputs[name] = events
    for rid in requests:
        assert [e.token_id for e in outputs["cuda"][rid]] == [e.token_id for e in outputs["cpu"][rid]]
    np.testing.assert_allclose([e.logprob for e in outputs["cuda"]["greedy"]],
                               [e.logprob for e in outputs["cpu"]["greedy"]], atol=1e-4)


def test_a_type_without_cuda_kernel_is_a_clear_error(tmp_path):
    """Q5_0 has CPU kernels only: loading it on the CUDA backend says so, rather than misreading it."""
    path = write_tiny_llama(tmp_path / "q5_0.gguf", vocab=300, hidden=64, ffn=128, matrix_type="Q5_0")
    with pytest.raises(GGUFError, match="Q5_0 has no CUDA kernel"):
        CudaLlamaModel.load(path)


def test_an_architecture_without_cuda_kernels_is_refused_or_runs_on_the_cpu_with_auto(tmp_path):
    """qwen2's biases have no CUDA kernel yet: --device cuda refuses it by name; --device auto (which
    finds the simulated GPU here) runs it on the CPU instead."""
    from engine.llm import LLM
    path = write_tiny_llama(tmp_path / "qwen2.gguf", vocab=300, hidden=64, ffn=128, architecture="qwen2")
    with pytest.raises(GGUFError, match="architecture 'qwen2' runs on the CPU backend only"):
        LLM.load(path, device="cuda")
    assert type(LLM.load(path, device="auto").model) is DecoderModel

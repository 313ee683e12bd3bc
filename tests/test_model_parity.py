"""The whole model against the golden references (tests/golden, a copy of ../shared/fixtures)."""
import numpy as np
import pytest
from gguf_factory import write_tiny_llama

from engine.generation import Generator, RequestOptions
from engine.kernels import reference as R
from engine.model import DecoderModel, ForwardBatch
from engine.sampling import GREEDY
from engine.stopping import StoppingCriteria


def prompts(reference):
    return reference["chat"] + reference["raw"]


def last_logits(model, ids, decode_last=True, num_blocks=8, kv_dtype="float32"):
    """Logits at the last position: prefill all but the last token, then one decode-sized step
    (so the fast mode's int8 path computes them), or everything in one batch."""
    kv = model.new_kv_cache(num_blocks=num_blocks, block_size=16, dtype=kv_dtype)
    table = np.arange(num_blocks, dtype=np.int32).reshape(1, num_blocks)
    n = len(ids)

    def step(chunk, start):
        pos = np.arange(start, start + len(chunk), dtype=np.int32)
        batch = ForwardBatch(np.array(chunk, np.int32), pos, np.zeros(len(chunk), np.int32), table, pos.copy(),
                             np.array([len(chunk) - 1], np.int32))
        return model.forward(batch, kv)[0]

    if decode_last:
        step(ids[:-1], 0)
        return step(ids[-1:], n - 1)
    return step(ids, 0)


def top20_error(logits, case):
    top = np.array(case["last_logits_top20"])
    return float(np.abs(logits[top[:, 0].astype(int)] - top[:, 1]).max())


@pytest.mark.parametrize("decode_last", [False, True], ids=["batch", "decode"])
def test_exact_mode_logits_within_0_02_of_transformers(llm, hf_reference, decode_last):
    for case in prompts(hf_reference):
        err = top20_error(last_logits(llm.model, case["prompt_ids"], decode_last), case)
        assert err < 0.02, f"{case.get('prompt_text')!r}: top-20 logits off by {err}"


def test_exact_mode_full_logit_vector(llm, hf_reference, chat0_logits):
    logits = last_logits(llm.model, hf_reference["chat"][0]["prompt_ids"])
    assert np.abs(logits - chat0_logits).max() < 0.05


def assert_greedy_tokens_match(llm, cases, max_context=512):
    """Greedy continuations (48 tokens) equal the reference's on at least 7 of 8 prompts; the
    others at least in their first 16 tokens."""
    generator = Generator(llm.model, llm.tokenizer, max_context=max_context)
    options = RequestOptions(GREEDY, StoppingCriteria(max_new_tokens=48))
    full, diverged = 0, []
    for case in cases:
        want = case["greedy_48"]
        got = [e.token_id for e in generator.generate(case["prompt_ids"], options)]
        if got == want:
            full += 1
        else:
            diverged.append(case.get("prompt_text", "")[:40])
            assert got[:16] == want[:16], f"{case.get('prompt_text')!r} diverges in its first 16 tokens"
    assert full >= 7, diverged


def test_exact_mode_reproduces_transformers_greedy_tokens(llm, hf_reference):
    assert_greedy_tokens_match(llm, prompts(hf_reference))


@pytest.mark.parametrize("decode_last", [False, True], ids=["batch", "decode"])
def test_a_float16_kv_cache_stays_within_the_fp32_tolerance(llm, hf_reference, decode_last):
    """Keys and values rounded to halves (EngineConfig.kv_cache_dtype="float16"), every activation
    float32: the top-20 logits stay within the fixtures' 0.02 for an fp32 engine (measured: 0.008
    here, 0.010 on the 0.5B model)."""
    for case in prompts(hf_reference):
        err = top20_error(last_logits(llm.model, case["prompt_ids"], decode_last, kv_dtype="float16"), case)
        assert err < 0.02, f"{case.get('prompt_text')!r}: top-20 logits off by {err}"


def test_a_float16_kv_cache_keeps_transformers_greedy_tokens_on_7_of_8_prompts(llm, hf_reference,
                                                                                llamacpp_reference):
    """48 greedy tokens equal transformers' on at least 7 of the 8 prompts (llama.cpp, whose cache
    is float16 too, on 2): a half-rounded key can flip a near-tie, as one prompt shows at token 10."""
    generator = Generator(llm.model, llm.tokenizer, max_context=512, kv_cache_dtype="float16")
    options = RequestOptions(GREEDY, StoppingCriteria(max_new_tokens=48))
    same = sum([e.token_id for e in generator.generate(case["prompt_ids"], options)] == case["greedy_48"]
               for case in prompts(hf_reference))
    peer_same = sum(peer["greedy_48"] == case["greedy_48"]
                    for peer, case in zip(prompts(llamacpp_reference), prompts(hf_reference), strict=True))
    assert same >= max(7, peer_same), (same, peer_same)


def test_fast_mode_is_no_further_from_fp32_than_llama_cpp(fast_llm, hf_reference, llamacpp_reference):
    """int8 activations: the top-20 logit errors (max and mean over the 8 prompts) and the count of
    prompts whose top-1 token changes are at most llama.cpp's on the same prompts."""
    ours, theirs, ours_top1, theirs_top1 = [], [], 0, 0
    for case, peer in zip(prompts(hf_reference), prompts(llamacpp_reference), strict=True):
        logits = last_logits(fast_llm.model, case["prompt_ids"])
        ours.append(top20_error(logits, case))
        peer_logits = dict((int(i), v) for i, v in peer["last_logits_top20"])
        theirs.append(max(abs(peer_logits[int(i)] - v) for i, v in case["last_logits_top20"] if int(i) in peer_logits))
        ours_top1 += int(np.argmax(logits)) != case["last_logits_top20"][0][0]
        theirs_top1 += peer["last_logits_top20"][0][0] != case["last_logits_top20"][0][0]
    assert max(ours) <= max(theirs), (ours, theirs)
    assert np.mean(ours) <= np.mean(theirs), (ours, theirs)
    assert ours_top1 <= theirs_top1


@pytest.mark.parametrize("matrix_type", ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K",
                                         "Q6_K", "F16", "BF16", "F32"])
def test_tiny_random_model_matches_numpy_reference(matrix_type, tiny_model_dir):
    """Every weight type through the whole model (written as a real GGUF file), exact mode:
    prefill of six tokens then one decode step, against the NumPy composition of the references."""
    path = write_tiny_llama(tiny_model_dir / f"tiny_{matrix_type}.gguf", matrix_type=matrix_type,
                            tied=matrix_type != "Q4_K")
    model = DecoderModel.load(path)
    ids = [5, 17, 33, 2, 60, 9, 11]
    ref = R.forward(model, np.array(ids))[-1]
    got = last_logits(model, ids)
    np.testing.assert_allclose(got, ref, rtol=0, atol=2e-6 * np.abs(ref).max())

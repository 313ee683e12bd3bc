"""Sampling: pure logic on synthetic logits, and the real model through the generator."""
import numpy as np
import pytest

from engine.generation import Generator, RequestOptions
from engine.sampling import GREEDY, Sampler, SamplingError, SamplingParams, logprobs_of, sample_from
from engine.stopping import StoppingCriteria


def draw_many(logits, params, n=4000, seed=0):
    rng = np.random.default_rng(seed)
    return np.bincount([sample_from(logits, params, rng) for _ in range(n)], minlength=len(logits)) / n


def test_top_k_keeps_only_the_k_largest():
    logits = np.array([1.0, 5.0, 3.0, 4.0, 2.0], np.float32)
    freq = draw_many(logits, SamplingParams(temperature=1.0, top_k=2))
    assert set(np.nonzero(freq)[0]) == {1, 3}
    p = np.exp([5.0, 4.0]) / np.exp([5.0, 4.0]).sum()
    assert abs(freq[1] - p[0]) < 0.03


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = np.array([0.5, 0.3, 0.15, 0.05])
    logits = np.log(probs).astype(np.float32)
    freq = draw_many(logits, SamplingParams(top_p=0.8))
    assert set(np.nonzero(freq)[0]) == {0, 1}                     # 0.5 + 0.3 reaches 0.8
    freq = draw_many(logits, SamplingParams(top_p=0.81))
    assert set(np.nonzero(freq)[0]) == {0, 1, 2}


def test_top_p_over_a_large_flat_vocabulary():
    """More than the first candidate pools (64, 512, 4096) are needed: the full sort is taken."""
    logits = np.zeros(20000, np.float32)
    rng = np.random.default_rng(1)
    picks = {sample_from(logits, SamplingParams(top_p=0.9), rng) for _ in range(300)}
    assert max(picks) > 4096 and len(picks) > 250


def test_min_p_drops_tokens_below_a_fraction_of_the_best():
    probs = np.array([0.6, 0.25, 0.1, 0.05])
    freq = draw_many(np.log(probs).astype(np.float32), SamplingParams(min_p=0.2))
    assert set(np.nonzero(freq)[0]) == {0, 1}                     # 0.1 < 0.2 * 0.6


def test_temperature_sharpens_and_flattens():
    logits = np.array([2.0, 1.0, 0.0], np.float32)
    cold = draw_many(logits, SamplingParams(temperature=0.25))
    hot = draw_many(logits, SamplingParams(temperature=4.0))
    assert cold[0] > 0.95 and hot[0] < 0.5


def test_penalties():
    logits = np.array([2.0, -2.0, 1.0, 0.5], np.float32)
    sampler = Sampler(SamplingParams(repetition_penalty=2.0, presence_penalty=0.5, frequency_penalty=0.25),
                      prompt_ids=[1])
    sampler.observe(2)
    sampler.observe(2)
    out = sampler._penalized(logits)
    assert out[0] == 2.0                                   # unseen
    assert out[1] == -4.0                                  # prompt token, negative: multiplied
    assert out[2] == pytest.approx(1.0 / 2.0 - 0.5 - 0.25 * 2)   # generated twice
    assert out[3] == 0.5


def test_no_repeat_ngram_bans_the_token_that_would_repeat_an_output_ngram():
    sampler = Sampler(SamplingParams(temperature=0.0, no_repeat_ngram_size=3), prompt_ids=[7, 8, 9])
    for token in (1, 2, 3, 1):
        sampler.observe(token)
    assert sampler.banned() == []                          # context (3, 1): never followed yet
    sampler.observe(2)
    assert sampler.banned() == [3]                         # (1, 2) was followed by 3
    logits = np.array([0, 0, 0, 9, 1, 0, 0, 0, 0, 0], np.float32)
    assert sampler.sample(logits) == 4                     # greedy takes the next best
    # the prompt's n-grams are not banned: an answer may quote its sources
    quoting = Sampler(SamplingParams(temperature=0.0, no_repeat_ngram_size=2), prompt_ids=[5, 3])
    quoting.observe(5)
    assert quoting.banned() == [] and quoting.sample(logits) == 3


def test_no_repeat_ngram_never_bans_the_whole_vocabulary():
    sampler = Sampler(SamplingParams(temperature=0.0, no_repeat_ngram_size=2), prompt_ids=[])
    for token in (0, 0, 0, 1, 0):
        sampler.observe(token)
    assert sampler.banned() == [0, 1]
    assert sampler.sample(np.array([3.0, 1.0], np.float32)) == 0   # every token banned: none is


def test_greedy_decoding_with_no_repeat_ngram_has_no_repeated_ngram(llm):
    def ngrams(ids, n):
        return [tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)]
    plain = generate_ids(llm, "1, 2, 1, 2, 1, 2, 1, 2,", GREEDY, n=48)
    assert len(set(ngrams(plain, 4))) < len(ngrams(plain, 4))        # the model loops on its own
    banned = generate_ids(llm, "1, 2, 1, 2, 1, 2, 1, 2,", SamplingParams(temperature=0.0, no_repeat_ngram_size=4),
                          n=48)
    assert len(set(ngrams(banned, 4))) == len(ngrams(banned, 4))


@pytest.mark.parametrize("kwargs,message", [
    ({"no_repeat_ngram_size": 1}, "no_repeat_ngram_size"),
    ({"no_repeat_ngram_size": 65}, "no_repeat_ngram_size"),
    ({"temperature": -0.1}, "temperature must be >= 0"),
    ({"top_p": 0.0}, "top_p must be in \\(0, 1\\]"),
    ({"top_p": 1.5}, "top_p"),
    ({"min_p": -1}, "min_p"),
    ({"top_k": -3}, "top_k"),
    ({"repetition_penalty": 0}, "repetition_penalty"),
    ({"presence_penalty": 3}, "presence_penalty"),
    ({"temperature": float("nan")}, "finite"),
])
def test_bad_parameters_are_clear_errors(kwargs, message):
    with pytest.raises(SamplingError, match=message):
        SamplingParams(**kwargs)


def test_logprobs_are_the_model_distribution():
    logits = np.array([3.0, 1.0, 0.0, -1.0], np.float32)
    lp, top = logprobs_of(logits, 1, top_n=2)
    log_z = np.log(np.exp(logits.astype(np.float64)).sum())
    assert lp == pytest.approx(1.0 - log_z)
    assert [i for i, _ in top] == [0, 1] and top[0][1] == pytest.approx(3.0 - log_z)


def generate_ids(llm, prompt, sampling, n=24):
    generator = Generator(llm.model, llm.tokenizer, max_context=256)
    options = RequestOptions(sampling, StoppingCriteria(max_new_tokens=n, ignore_eos=True))
    return [e.token_id for e in generator.generate(llm.encode(prompt), options)]


def test_same_seed_same_output_and_other_seed_differs(llm):
    params = SamplingParams(temperature=1.0, top_p=0.95, seed=7)
    first = generate_ids(llm, "Once upon a time", params)
    assert generate_ids(llm, "Once upon a time", params) == first
    assert generate_ids(llm, "Once upon a time", SamplingParams(temperature=1.0, top_p=0.95, seed=8)) != first


def test_top_k_one_is_greedy(llm):
    sampled = generate_ids(llm, "The capital of France is", SamplingParams(temperature=0.9, top_k=1, seed=3))
    assert sampled == generate_ids(llm, "The capital of France is", GREEDY)

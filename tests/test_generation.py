"""The generation API: token events as they are produced."""
import math

import pytest

from engine.generation import GenerationError, Generator, RequestOptions
from engine.sampling import GREEDY
from engine.stopping import FinishReason, StoppingCriteria


@pytest.fixture(scope="module")
def generator(llm):
    return Generator(llm.model, llm.tokenizer, max_context=256)


def test_events_stream_text_that_adds_up_to_the_answer(llm, generator, hf_reference):
    case = hf_reference["chat"][0]
    events = list(generator.generate(case["prompt_ids"], RequestOptions(GREEDY, StoppingCriteria(48))))
    assert [e.token_id for e in events] == case["greedy_48"]
    assert [e.index for e in events] == list(range(len(events)))
    assert "".join(e.text for e in events) == "The capital of France is Paris."
    assert events[-1].finish_reason is FinishReason.END_OF_TURN and events[-1].text == ""
    assert all(e.prompt_tokens == len(case["prompt_ids"]) for e in events)


def test_logprobs_and_alternatives(generator, llm):
    options = RequestOptions(GREEDY, StoppingCriteria(4), logprobs=True, top_logprobs=3)
    events = list(generator.generate(llm.encode("The capital of France is"), options))
    for e in events:
        assert e.logprob <= 0 and len(e.top_logprobs) == 3
        assert e.top_logprobs[0][0] == e.token_id                 # greedy: the chosen is the most likely
        assert math.isclose(e.top_logprobs[0][1], e.logprob, rel_tol=1e-9)
        assert e.top_logprobs[0][1] >= e.top_logprobs[1][1] >= e.top_logprobs[2][1]


def test_prefill_in_chunks_equals_one_pass(llm):
    ids = llm.encode("The history of the city goes back a long way. " * 12)
    one = Generator(llm.model, llm.tokenizer, max_context=512, prefill_chunk=512)
    chunked = Generator(llm.model, llm.tokenizer, max_context=512, prefill_chunk=32)
    options = RequestOptions(GREEDY, StoppingCriteria(8, ignore_eos=True))
    assert [e.token_id for e in one.generate(ids, options)] == [e.token_id for e in chunked.generate(ids, options)]


def test_context_limit_ends_with_length(llm):
    generator = Generator(llm.model, llm.tokenizer, max_context=40)
    ids = llm.encode("Count: 1 2 3 4 5 6 7 8 9 10")
    events = list(generator.generate(ids, RequestOptions(GREEDY, StoppingCriteria(100, ignore_eos=True))))
    assert len(ids) + len(events) == 40 and events[-1].finish_reason is FinishReason.LENGTH


@pytest.mark.parametrize("ids,message", [([], "empty"), ([1, 49152], "out of range"), ([5] * 300, "context holds")])
def test_bad_prompts_are_clear_errors(generator, ids, message):
    with pytest.raises(GenerationError, match=message):
        next(generator.generate(ids))

"""Stop sequences cut the streamed text exactly, however the text arrives in pieces."""
import pytest

from engine.generation import Generator, RequestOptions
from engine.sampling import GREEDY
from engine.stopping import FinishReason, StoppingCriteria, StoppingError, StopSequenceMatcher


def feed_all(matcher, pieces):
    out = "".join(matcher.feed(p) for p in pieces)
    return out + matcher.flush()


@pytest.mark.parametrize("pieces", [["Hello wor", "ld. STOP here"], ["Hello world. S", "T", "OP"],
                                    ["Hello world. STOP"]])
def test_text_ends_right_before_the_stop_sequence(pieces):
    m = StopSequenceMatcher(("STOP",))
    assert feed_all(m, pieces) == "Hello world. "
    assert m.stopped and m.matched == "STOP"


def test_a_false_start_is_released():
    m = StopSequenceMatcher(("STOP",))
    assert m.feed("ST") == ""
    assert m.feed("AR") == "STAR"
    assert feed_all(m, ["T"]) == "T" and not m.stopped


def test_earliest_of_several_stop_sequences_wins_and_can_be_kept():
    m = StopSequenceMatcher(("\n\n", "The"), include_stop=True)
    assert feed_all(m, ["Paris.\n\nThe answer"]) == "Paris.\n\n"


def test_limits():
    with pytest.raises(StoppingError, match="max_new_tokens"):
        StoppingCriteria(max_new_tokens=0)
    with pytest.raises(StoppingError, match="empty"):
        StoppingCriteria(stop_sequences=("",))


def run(llm, prompt, stopping):
    generator = Generator(llm.model, llm.tokenizer, max_context=256)
    events = list(generator.generate(llm.encode(prompt), RequestOptions(GREEDY, stopping)))
    return "".join(e.text for e in events), events


def test_model_output_is_cut_at_the_stop_sequence(llm, hf_reference):
    full = hf_reference["raw"][0]["greedy_text"].replace("<|im_end|>", "")   # " Paris.\n\nThe answer is: ..."
    text, events = run(llm, "The capital of France is", StoppingCriteria(max_new_tokens=48, stop_sequences=("answer",)))
    assert text == full[:full.index("answer")]
    assert events[-1].finish_reason is FinishReason.STOP_SEQUENCE
    assert all(e.finish_reason is None for e in events[:-1])


def test_finish_reasons(llm):
    text, events = run(llm, "The capital of France is", StoppingCriteria(max_new_tokens=3))
    assert len(events) == 3 and events[-1].finish_reason is FinishReason.LENGTH
    _, events = run(llm, "The capital of France is", StoppingCriteria(max_new_tokens=48))
    assert events[-1].finish_reason is FinishReason.END_OF_TURN and events[-1].token_id == 2
    _, events = run(llm, "The capital of France is", StoppingCriteria(max_new_tokens=48, stop_token_ids=(30,)))
    assert events[-1].finish_reason is FinishReason.STOP_TOKEN and events[-1].token_id == 30

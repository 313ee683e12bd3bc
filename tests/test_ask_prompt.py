"""Ask's prompt and citations (services/retrieval/prompt.py): pure logic, on the tests' model's
chat template and tokenizer."""
import numpy as np

from services.retrieval.index import Hit
from services.retrieval.prompt import SOURCE_LABEL_STOP, SYSTEM, attributed_numbers, build_prompt, cited_numbers
from services.retrieval.store import ChunkRecord


def _hit(n, text, context=""):
    record = ChunkRecord(f"c{n}", f"d{n}", 0, f"s{n}", 0, len(text), text, np.zeros(4, np.float32), context=context)
    return Hit(record, 1.0 / n, 0.0, 0.5, n, n)


def test_sources_are_numbered_blocks_best_first_then_the_question(llm):
    hits = [_hit(1, "The with statement wraps a block.", "with: The with statement"), _hit(2, "Other text.")]
    prompt = build_prompt(llm, "What does with do?", hits, 2048)
    system, user = prompt.messages
    assert system == {"role": "system", "content": SYSTEM}
    assert user["content"] == ("Source 1 (with: The with statement):\nThe with statement wraps a block.\n\n"
                               "Source 2 (s2):\nOther text.\n\nQuestion: What does with do?")
    assert [h.record.chunk_id for h in prompt.sources] == ["c1", "c2"]
    assert prompt.prompt_tokens == len(llm.encode_chat(prompt.messages))
    # a model copying the blocks writes the next label: the answer stops there
    assert ("\n" + user["content"]).count(SOURCE_LABEL_STOP) == 2


def test_sources_that_do_not_fit_are_cut_or_left_out(llm):
    long = " ".join(f"word{i}" for i in range(400))
    hits = [_hit(1, "short passage"), _hit(2, long), _hit(3, "never reached")]
    prompt = build_prompt(llm, "q?", hits, 300)
    assert prompt.prompt_tokens <= 300
    assert [h.record.chunk_id for h in prompt.sources] == ["c1", "c2"]
    assert prompt.messages[1]["content"].split("Source 2 (s2):\n")[1].split("\n\n")[0].endswith(" ...")


def test_cited_numbers_read_brackets_and_source_mentions_within_range():
    assert cited_numbers("It wraps a block [1], see also [3] and [9].", 4) == {1, 3}
    assert cited_numbers("According to Source 2, and source 4 too.", 4) == {2, 4}
    assert cited_numbers("No citation here; the resource 2 is not one.", 4) == set()


def test_an_unmarked_answer_is_attributed_to_the_source_whose_words_it_reuses():
    texts = ["The finally clause is executed on the way out of the loop.", "Integers have unlimited precision."]
    answer = "The finally clause is executed on the way out."
    # equal cosines: the shared bigrams decide
    assert attributed_numbers(answer, texts, [0.5, 0.5]) == {1}
    # a clearly closer embedding wins over a few shared words
    assert attributed_numbers("Integers are exact.", texts, [0.2, 0.8]) == {2}
    # two sources as close as each other are both cited
    assert attributed_numbers("zzz", texts, [0.61, 0.60]) == {1, 2}
    # nothing close enough: no citation
    assert attributed_numbers("zzz", texts, [0.1, 0.2]) == set()

"""The Ask evaluation set (bench/ask_eval.json) holds against the corpus it is about, and its
measures (bench/ask_eval.py) compute what they say."""
import sys
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from ask_eval import answer_has_keywords, contains_evidence, load, mrr_at_k, normalize, recall_at_k, repeats_ngram  # noqa: E402

from services.retrieval.corpus import pydoc_topics  # noqa: E402


@pytest.fixture(scope="module")
def corpus():
    return {source: normalize(text) for _, text, source, _ in pydoc_topics()}


@pytest.fixture(scope="module")
def eval_set():
    return load()


def test_sizes_and_splits(eval_set):
    answerable, unanswerable = eval_set.answerable, eval_set.unanswerable
    assert len(answerable) >= 120 and len({a.topic for a in answerable}) >= 60
    assert len(unanswerable) >= 30
    assert Counter(u.kind for u in unanswerable)["off_domain"] >= 5
    ids = [a.id for a in answerable] + [u.id for u in unanswerable]
    assert len(ids) == len(set(ids))
    held_a, held_u = eval_set.split("heldout")
    assert len(held_a) == 40 and len(held_u) == 10
    assert len({a.topic for a in held_a}) == 40                    # one per topic at most
    dev_a, dev_u = eval_set.split("dev")
    assert len(dev_a) + len(held_a) == len(answerable) and len(dev_u) + len(held_u) == len(unanswerable)
    with pytest.raises(ValueError):
        eval_set.split("test")


def test_every_evidence_phrase_is_in_the_topics_it_names(eval_set, corpus):
    for a in eval_set.answerable:
        holders = sorted(source for source, text in corpus.items() if normalize(a.evidence) in text)
        assert a.topic in holders, a.id
        assert sorted(a.topics) == holders, a.id
        assert len(a.evidence.split()) >= 4, a.id
        assert a.keywords and all(group and all(isinstance(k, str) and k for k in group) for group in a.keywords)


def test_unanswerable_questions_name_terms_no_topic_has(eval_set, corpus):
    everything = " ".join(corpus.values()).casefold()
    for u in eval_set.unanswerable:
        assert u.kind in ("off_domain", "near_domain") and u.absent, u.id
        assert not [t for t in u.absent if t.casefold() in everything], u.id


def test_measures():
    assert contains_evidence("a  chunk\nwith the   phrase inside", "with the phrase")
    assert not contains_evidence("with the phrase", "With the phrase")
    assert answer_has_keywords("It raises a TypeError [1].", [["TypeError"], ["raise", "raises"]])
    assert not answer_has_keywords("It raises an error.", [["TypeError"], ["raise"]])
    assert repeats_ngram([1, 2, 3] * 3 + [9], n=3, times=3)
    assert not repeats_ngram([1, 2, 3] * 2 + [4, 5, 6], n=3, times=3)
    assert repeats_ngram([7] * 10, n=8, times=3)                  # overlapping occurrences count
    flags = [[False, True], [True], [False, False, False]]
    assert recall_at_k(flags, 1) == pytest.approx(1 / 3) and recall_at_k(flags, 5) == pytest.approx(2 / 3)
    assert mrr_at_k(flags, 10) == pytest.approx((0.5 + 1 + 0) / 3)

"""Pure parts of retrieval's ranking: contextual chunk headers (sections.py), BM25 tokens and
stemming, z-score and weighted reciprocal rank fusion (index.py), on hand-made records and the
real corpus' outlines."""
import numpy as np
import pytest

from services.retrieval.corpus import pydoc_topics
from services.retrieval.index import Hit, SearchIndex, SearchMode, SearchSettings, lexical_tokens
from services.retrieval.relevance import AnswerabilityCheck
from services.retrieval.sections import DocumentOutline, contextual_header
from services.retrieval.store import ChunkRecord

RST = """Special method names
********************

Intro text.

Basic customization
===================

object.__init__(self)

   Called after the instance has been created.

Customizing attribute access
============================

Implementing Descriptors
------------------------

Descriptor text.

Back at level two
=================

Tail text.
"""


def test_rst_outline_levels_follow_the_order_underlines_first_appear():
    outline = DocumentOutline.of(RST)
    assert [(h.level, h.title) for h in outline.headings] == [
        (1, "Special method names"), (2, "Basic customization"), (2, "Customizing attribute access"),
        (3, "Implementing Descriptors"), (2, "Back at level two")]
    assert outline.path_at(RST.index("Called after")) == ["Special method names", "Basic customization"]
    assert outline.path_at(RST.index("Descriptor text")) == [
        "Special method names", "Customizing attribute access", "Implementing Descriptors"]
    assert outline.path_at(RST.index("Tail text")) == ["Special method names", "Back at level two"]
    assert outline.path_at(0) == ["Special method names"]


def test_markdown_headings_and_a_document_without_any():
    md = "# Guide\n\nintro\n\n## Install\n\npip it\n\n### From source\n\nclone it\n\n## Use\n\nrun it\n"
    outline = DocumentOutline.of(md)
    assert outline.path_at(md.index("clone")) == ["Guide", "Install", "From source"]
    assert outline.path_at(md.index("run it")) == ["Guide", "Use"]
    assert contextual_header("notes.txt", DocumentOutline.of("just text\nno headings"), 3) == "notes.txt"


def test_a_rule_under_a_sentence_is_not_a_heading():
    text = "This is a long sentence that happens to end above a short rule line.\n---\n\nMore text."
    assert DocumentOutline.of(text).headings == []


def test_headers_of_the_real_corpus_name_the_section():
    topics = {source: text for _, text, source, _ in pydoc_topics()}
    text = topics["specialnames"]
    offset = text.index("object.__slots__")
    header = contextual_header("specialnames", DocumentOutline.of(text), offset)
    assert header == "specialnames: Special method names > Customizing attribute access > __slots__"
    # every topic has a title, and the source is not repeated when the title is the source
    for source, text in topics.items():
        assert DocumentOutline.of(text).headings, source


def _records(texts):
    return [ChunkRecord(f"c{i}", f"d{i}", 0, f"s{i}", 0, len(t), t, np.eye(4, dtype=np.float32)[i % 4])
            for i, t in enumerate(texts)]


def test_stemming_matches_inflections_in_both_directions():
    assert lexical_tokens(["Raises exceptions"], stemming=True) == lexical_tokens(["raised exception"], True)
    assert lexical_tokens(["__init__ classes"], stemming=True) == [["__init__", "class"]]
    records = _records(["the iterator raised an error", "nothing relevant here at all", "more filler text"])
    query = np.zeros(4, np.float32)
    stemmed = SearchIndex(1, records, 4, SearchSettings(stemming=True))
    plain = SearchIndex(1, records, 4, SearchSettings(stemming=False))
    assert [h.record.chunk_id for h in stemmed.search("raises", query, SearchMode.LEXICAL, 3)] == ["c0"]
    assert plain.search("raises", query, SearchMode.LEXICAL, 3) == []


def test_the_header_is_what_bm25_sees_with_the_text():
    record = ChunkRecord("c0", "d0", 0, "with", 0, 10, "It must return a value.", np.eye(4, dtype=np.float32)[0],
                         context="with: The with statement > Context managers")
    other = _records(["unrelated words", "still unrelated"])
    index = SearchIndex(1, [record, *other], 4)
    hits = index.search("context managers", np.zeros(4, np.float32), SearchMode.LEXICAL, 3)
    assert [h.record.chunk_id for h in hits] == ["c0"]


@pytest.mark.parametrize("lexical_weight,first", [(0.0, "c0"), (1.0, "c1")])
def test_weighted_rrf_tips_a_disagreement_toward_the_heavier_ranking(lexical_weight, first):
    # c0 is the dense favourite, c1 the only lexical match and the dense ranking's last
    records = _records(["alpha beta", "zebra crossing", "gamma delta", "epsilon"])
    records[1].embedding = -records[0].embedding
    query = records[0].embedding.copy()
    index = SearchIndex(1, records, 4, SearchSettings(fusion="rrf", lexical_weight=lexical_weight))
    hits = index.search("zebra", query, SearchMode.HYBRID, 4)
    # c0: 1/61 (dense rank 1); c1: w/61 (lexical rank 1) + 1/64 (dense rank 4)
    assert hits[0].record.chunk_id == first


def test_operators_and_one_letter_names_are_lexical_tokens():
    assert lexical_tokens(["What does the & operator compute for x ** 2?"], stemming=False) == [
        ["what", "does", "the", "&", "operator", "compute", "for", "x", "**", "2"]]
    assert lexical_tokens(["a <= b -> c := d != e // f"], stemming=False) == [
        ["a", "<=", "b", "->", "c", ":=", "d", "!=", "e", "//", "f"]]
    records = _records(['The "&" operator yields the bitwise AND', "The power operator binds tightly",
                        "operator precedence table"])
    hits = SearchIndex(1, records, 4).search("& operator", np.zeros(4, np.float32), SearchMode.LEXICAL, 3)
    assert hits[0].record.chunk_id == "c0"


def _disagreement(dense_share):
    """c0: first in the dense ranking, no query word; c1: the only lexical match, a close second in dense."""
    records = _records(["alpha beta", "zebra crossing", "gamma delta", "epsilon", "filler one", "filler two"])
    vectors = np.array([[1, 0, 0, 0], [0.9, 0.44, 0, 0], [0.2, 0, 0.98, 0], [0.1, 0, 0, 0.99],
                        [0, 1, 0, 0], [0, 0, 1, 0]], np.float32)
    for record, v in zip(records, vectors, strict=True):
        record.embedding = v / np.linalg.norm(v)
    index = SearchIndex(1, records, 4, SearchSettings(dense_share=dense_share))
    return index.search("zebra", np.array([1, 0, 0, 0], np.float32), SearchMode.HYBRID, 6)


def test_zscore_fusion_weighs_the_two_standardised_scores():
    assert _disagreement(1.0)[0].record.chunk_id == "c0"         # dense alone
    assert _disagreement(0.0)[0].record.chunk_id == "c1"         # BM25 alone
    hits = _disagreement(0.7)
    assert [h.record.chunk_id for h in hits[:2]] == ["c1", "c0"]  # together, c1 is ahead
    # the fused score is what hybrid returns, best first
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_zscore_fusion_without_a_lexical_match_is_the_dense_ranking():
    records = _records(["alpha", "beta", "gamma", "delta"])
    query = np.array([0.1, 0.9, 0.3, 0.0], np.float32)
    index = SearchIndex(1, records, 4)
    hybrid = [h.record.chunk_id for h in index.search("zzz", query, SearchMode.HYBRID, 4)]
    dense = [h.record.chunk_id for h in index.search("zzz", query, SearchMode.DENSE, 4)]
    assert hybrid == dense == ["c1", "c2", "c0", "c3"]


def test_hybrid_fusion_filters_by_source_before_ranking():
    records = _records(["zebra one", "zebra two", "zebra three"])
    index = SearchIndex(1, records, 4)
    hits = index.search("zebra", records[0].embedding, SearchMode.HYBRID, 3, sources=["s1", "s2"])
    assert {h.record.source for h in hits} == {"s1", "s2"}


@pytest.mark.parametrize("settings", [{"fusion": "max"}, {"dense_share": 1.5}])
def test_bad_search_settings_are_refused(settings):
    with pytest.raises(ValueError):
        SearchSettings(**settings)


def test_unknown_terms_are_the_query_words_no_chunk_contains():
    index = SearchIndex(1, _records(["The with statement wraps a block", "raised exceptions propagate"]), 4)
    # stems match ("raises" -> "rais"), short words, numbers and symbols are never unknown
    assert index.unknown_terms("Which exceptions does the with statement raise?") == []
    assert index.unknown_terms("How do I read a CSV with pandas in 2024 & x?") == ["read", "csv", "panda"]


def _hit(record, cosine):
    return Hit(record, cosine, 0.0, cosine, 0, 1)


@pytest.mark.parametrize("question,best,admitted", [
    ("what does the with statement do", 0.39, False),       # below the floor
    ("what does the with statement do", 0.41, True),
    ("what does pandas do with the statement", 0.45, False),  # a word no chunk has: the higher floor
    ("what does pandas do with the statement", 0.51, True),
])
def test_answerability_needs_a_close_best_source(question, best, admitted):
    records = _records(["the with statement does this", "another chunk"])
    index = SearchIndex(1, records, 4)
    hits = [_hit(records[0], best), _hit(records[1], 0.3)]
    assert AnswerabilityCheck(0.40, 0.50).admits(question, hits, index) is admitted
    assert AnswerabilityCheck().admits(question, [], index) is False

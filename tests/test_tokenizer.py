"""The tokenizer built from the GGUF vocabulary, against the golden token ids."""
import pytest
from model_tokenizers import MODELS, QWEN_MODELS, reference, tokenizer

from engine.detokenizer import IncrementalDetokenizer
from engine.tokenizer import CONTROL, USER_DEFINED, _merges_from_scores


def test_token_ids_equal_the_reference_for_all_strings(llm, hf_reference):
    for case in hf_reference["tokenize"]:
        assert llm.tokenizer.encode(case["text"]) == case["ids"], case["text"]


def test_decode_inverts_encode(llm, hf_reference):
    for case in hf_reference["tokenize"]:
        assert llm.tokenizer.decode(llm.tokenizer.encode(case["text"])) == case["text"]


def test_chat_template_renders_the_reference_prompts(llm, hf_reference):
    for case in hf_reference["chat"]:
        assert llm.chat_prompt(case["messages"]) == case["prompt_text"]
        assert llm.encode_chat(case["messages"]) == case["prompt_ids"]


def test_special_tokens_are_single_ids_and_end_generation(llm):
    tok = llm.tokenizer
    assert tok.encode("<|im_start|>user") == [1, 4093]
    assert tok.special.eos_id == 2 and 2 in tok.special.end_of_generation_ids
    assert tok.decode([1, 4093], skip_special=True) == "user"


def test_offsets_point_into_the_text(llm):
    """Character offsets; the byte tokens of one character (≈ is two) all span that character."""
    text = "naïve café: 42 + π ≈ 45.14"
    ids, offsets = llm.tokenizer.encode_with_offsets(text)
    assert len(ids) == len(offsets)
    covered, end = "", 0
    for a, b in offsets:
        assert a <= b <= len(text) and b >= end
        covered += text[max(a, end):b]
        end = b
    assert covered == text


@pytest.mark.parametrize("text", ["Hello world", "日本語のテキスト 🙂🚀 emoji", "Ünïcödé ≠ ascii\n\ttabs", "a" * 300])
def test_streaming_detokenizer_never_emits_broken_utf8(llm, text):
    """Multi-byte characters span several byte tokens: each delta is whole characters only, and the
    deltas add up to the full decode."""
    ids = llm.tokenizer.encode(text)
    detok = IncrementalDetokenizer(llm.tokenizer)
    deltas = [detok.push(i) for i in ids] + [detok.flush()]
    for d in deltas:
        d.encode("utf-8")                 # raises on a lone surrogate
        assert "\ufffd" not in d
    assert "".join(deltas) == text
    assert any(d == "" for d in deltas[:-1]) or all(ord(c) < 128 for c in text)


def test_streaming_detokenizer_replaces_bytes_that_cannot_form_a_character(llm):
    """A model can emit byte tokens that never complete a character: a stray continuation byte,
    or a lead byte at the very end. Each becomes U+FFFD, and text around them survives."""
    token_bytes = llm.tokenizer.token_bytes
    stray, lead = token_bytes.index(b"\x80"), token_bytes.index(b"\xe2")
    a, b = llm.tokenizer.encode("a"), llm.tokenizer.encode("b")
    detok = IncrementalDetokenizer(llm.tokenizer)
    out = [detok.push(t) for t in a + [stray] + b + [lead]] + [detok.flush()]
    assert "".join(out) == "a\ufffdb\ufffd"


# ---------------------------------------------------------------------------- Qwen2.5 and Gemma 3
# Each model's ids against transformers and llama.cpp reading the same GGUF
# (tests/golden/<model>/tokenizer_reference.json, from tests/golden_tools/make_tokenizer_fixtures.py).


@pytest.mark.parametrize("name", MODELS)
def test_ids_equal_transformers_and_llamacpp_on_all_strings(name):
    tok, ref = tokenizer(name), reference(name)
    assert len(ref["tokenize"]) == 20
    wrong = [case["text"] for case in ref["tokenize"]
             if tok.encode(case["text"], add_bos=False) != case["hf_ids"]
             or tok.encode(case["text"], add_bos=False) != case["llamacpp_ids"]]
    assert wrong == []


@pytest.mark.parametrize("name", MODELS)
def test_decode_inverts_encode_on_all_strings(name):
    tok = tokenizer(name)
    for case in reference(name)["tokenize"]:
        assert tok.decode(tok.encode(case["text"], add_bos=False)) == case["text"]


@pytest.mark.parametrize("name", MODELS)
def test_bos_and_vocabulary_follow_the_file(name):
    """Gemma adds BOS (2) to plain text, Qwen adds none; as transformers' encode does by default."""
    tok, ref = tokenizer(name), reference(name)
    assert tok.encode(ref["with_bos"]["text"]) == ref["with_bos"]["hf_ids"] == ref["with_bos"]["llamacpp_ids"]
    assert (tok.vocab_size, tok.special.bos_id, tok.special.eos_id) == (ref["vocab_size"], ref["bos_id"], ref["eos_id"])


@pytest.mark.parametrize("name,texts", [
    ("qwen2.5-coder-0.5b-instruct", {"<|im_end|>", "<|endoftext|>"}),
    ("gemma-3-270m", {"<end_of_turn>", "<eos>"}),
])
def test_end_of_generation_ids(name, texts):
    """The models' generation_config stops. llama.cpp stops at more (Qwen's FIM tokens <|fim_pad|>,
    <|repo_name|>, <|file_sep|>, any token spelled </s>, which in Gemma is the HTML tag): a superset."""
    tok = tokenizer(name)
    assert {tok.pieces[i] for i in tok.special.end_of_generation_ids} == texts
    assert tok.special.end_of_generation_ids < set(reference(name)["llamacpp_eog_ids"])


@pytest.mark.parametrize("name", QWEN_MODELS)
def test_qwen_added_tokens_are_single_ids_and_control_ones_are_skipped(name):
    tok = tokenizer(name)
    added = [i for i, t in enumerate(tok.token_types) if t in (CONTROL, USER_DEFINED)]
    assert len(added) == 22 and added == list(range(151643, 151665))
    for i in added:
        assert tok.encode(tok.pieces[i]) == [i]
    ids = tok.encode("<|im_start|>user\n<tool_call>x</tool_call><|im_end|>")
    assert ids[0] == 151644 and ids[-1] == 151645
    assert tok.decode(ids, skip_special=True) == "user\n<tool_call>x</tool_call>"   # tool tags are text


def test_gemma_byte_fallback_and_spaces():
    """Characters outside the vocabulary become their UTF-8 bytes <0xNN>; runs of spaces and
    newlines are user-defined tokens of their own."""
    tok = tokenizer("gemma-3-270m")
    ids = tok.encode("𠜎", add_bos=False)
    assert [tok.pieces[i] for i in ids] == ["<0xF0>", "<0xA0>", "<0x9C>", "<0x8E>"]
    assert [tok.pieces[i] for i in tok.encode("a   b\n\n\nc", add_bos=False)] == ["a", "   ", "b", "\n\n\n", "c"]
    assert tok.encode("<start_of_turn>user", add_bos=False) == [105, 2364]


def test_merges_from_scores_puts_the_best_scoring_piece_first():
    pieces = ["a", "b", "c", "ab", "bc", "abc", "<s>"]
    scores = [0.0, 0.0, 0.0, -2.0, -1.0, -3.0, 0.0]
    types = [1, 1, 1, 1, 1, 1, CONTROL]
    vocab = {p: i for i, p in enumerate(pieces)}
    assert _merges_from_scores(pieces, scores, types, vocab) == [("b", "c"), ("a", "b"), ("a", "bc"), ("ab", "c")]

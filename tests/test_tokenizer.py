"""The tokenizer built from the GGUF vocabulary, against the golden token ids."""
import pytest

from engine.detokenizer import IncrementalDetokenizer


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

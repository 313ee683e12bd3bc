"""Tool calls in the Hermes format: parsed whole, parsed as they stream (however the text is split),
and the llguidance grammar that forces one, checked on the real Qwen tokenizer."""
import json
import random
import re

import pytest

from engine.tool_calls import (
    CLOSE_TAG,
    OPEN_TAG,
    ArgumentsDelta,
    ContentDelta,
    ToolCall,
    ToolCallError,
    ToolCallStart,
    ToolCallStreamParser,
    parse_tool_calls,
    tool_call_grammar,
)

WEATHER = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}\n</tool_call>'
TRICKY = ('<tool_call>\n{"name": "write_file", "arguments": {"path": "a\\"b}.txt", "text": "if (x) { y(); }\\n'
          '</tool", "nested": {"list": [1, {"k": []}, "]"], "n": -1.5e3, "t": true, "z": null}, '
          '"é": "日本"}}\n</tool_call>')

SAMPLES = [
    "Hello, world!",
    "",
    "  \n ",
    "Let me check.\n" + WEATHER,
    WEATHER + "\n" + TRICKY,
    "Before " + WEATHER + " between\n\n" + TRICKY + "\nafter <tool",
    '<tool_call>{"arguments": {"a": 1}, "name": "late_name"}</tool_call>',           # arguments first
    '<tool_call>\n{"name": "f", "arguments": "{\\"x\\": [1, 2]}"}\n</tool_call>',    # arguments as a string
    '<tool_call>\n{"name": "now"}\n</tool_call>',                                     # no arguments
    '<tool_call>\n{"name": "now", "arguments": null, "extra": [1, "}"]}\n</tool_call>',
    'text <tool_call>\n{"name" "f", "arguments": {"a": 1}}\n</tool_call> more',      # bad JSON: content
    '<tool_call>\n{"arguments": {"a": 1}}\n</tool_call>',                            # no name: content
    '<tool_call>\n{"name": 3, "arguments": {}}\n</tool_call>',
    '<tool_call>\n[1, 2]\n</tool_call>',
    "a </tool_call> b <tool_c> <tool_call",                                           # no block at all
    '<tool_call>\n{"name": "f", "arguments": {"a": "b"}}',                           # cut after the JSON
    '<tool_call>\n{"name": "f',                                                      # cut inside it
    WEATHER + '\n<tool_call>\n{"name": "g", "arguments": {"q": "x"}}',
]


def stream(pieces):
    """(content, {index: (id, name, arguments text)}, parser) from feeding pieces; checks the events'
    order: a call's start comes once, before its arguments, indices in order."""
    parser = ToolCallStreamParser()
    events = [e for p in pieces for e in parser.feed(p)] + parser.finish()
    content, calls = "", {}
    for e in events:
        if isinstance(e, ContentDelta):
            assert e.text
            content += e.text
        elif isinstance(e, ToolCallStart):
            assert e.index == len(calls) and e.name
            assert re.fullmatch(r"call_[0-9a-f]{24}", e.id)
            calls[e.index] = (e.id, e.name, "")
        else:
            assert isinstance(e, ArgumentsDelta) and e.text and e.index in calls
            cid, name, text = calls[e.index]
            calls[e.index] = (cid, name, text + e.text)
    return content, calls, parser


def assert_same_as_whole(text, pieces):
    content, calls = parse_tool_calls(text)
    got_content, got_calls, parser = stream(pieces)
    assert got_content == content
    assert not parser.malformed
    assert [(n, json.loads(a)) for _, n, a in got_calls.values()] == [(c.name, json.loads(c.arguments)) for c in calls]
    assert [(c.id, c.name, c.arguments) for c in parser.calls] == \
        [(cid, c.name, c.arguments) for (cid, _, _), c in zip(got_calls.values(), calls)]


# ---------------------------------------------------------------------------- whole outputs

def test_plain_text_has_no_calls():
    assert parse_tool_calls("  Hello!\n") == ("Hello!", [])
    assert parse_tool_calls("") == ("", [])


def test_one_call_after_some_text():
    content, calls = parse_tool_calls("Let me check.\n" + WEATHER + "\n")
    assert content == "Let me check."
    [call] = calls
    assert call.name == "get_weather" and call.arguments == '{"city": "Paris", "unit": "c"}'
    assert re.fullmatch(r"call_[0-9a-f]{24}", call.id)
    assert call.as_dict() == {"id": call.id, "type": "function",
                              "function": {"name": "get_weather", "arguments": call.arguments}}


def test_several_calls_in_order_with_fresh_ids():
    content, calls = parse_tool_calls(WEATHER + "\n" + TRICKY + "\n" + WEATHER)
    assert content == ""
    assert [c.name for c in calls] == ["get_weather", "write_file", "get_weather"]
    assert len({c.id for c in calls}) == 3
    args = json.loads(calls[1].arguments)
    assert args["path"] == 'a"b}.txt' and args["text"].endswith("</tool") and args["é"] == "日本"
    assert calls[1].arguments == json.dumps(args, ensure_ascii=False)          # compact, unicode kept


def test_arguments_as_a_json_string_missing_or_null():
    _, [call] = parse_tool_calls('<tool_call>{"name": "f", "arguments": "{\\"x\\":[1,2]}"}</tool_call>')
    assert call.arguments == '{"x": [1, 2]}'
    for text in ('<tool_call>{"name": "now"}</tool_call>', '<tool_call>{"name": "now", "arguments": null}</tool_call>'):
        assert parse_tool_calls(text)[1][0].arguments == "{}"


@pytest.mark.parametrize("block", [
    '<tool_call>\n{"name": "f", "arguments": {"a": 1}\n</tool_call>',        # JSON does not parse
    '<tool_call>\n{"arguments": {"a": 1}}\n</tool_call>',                    # no name
    '<tool_call>\n{"name": "", "arguments": {}}\n</tool_call>',
    '<tool_call>\n{"name": ["f"], "arguments": {}}\n</tool_call>',
    '<tool_call>\n{"name": "f", "arguments": [1]}\n</tool_call>',            # arguments not an object
    '<tool_call>\n{"name": "f", "arguments": "[1]"}\n</tool_call>',
    '<tool_call>\n{"name": "f", "arguments": "{not json"}\n</tool_call>',
    '<tool_call>\n"just a string"\n</tool_call>',
    '<tool_call>\n{"name": "f", "arguments": {}} trailing\n</tool_call>',
])
def test_a_block_that_is_not_a_call_stays_in_the_content(block):
    content, calls = parse_tool_calls("Sure. " + block + " " + WEATHER)
    assert content == "Sure. " + block
    assert [c.name for c in calls] == ["get_weather"]


def test_an_unterminated_last_block_counts_only_when_its_json_is_complete():
    _, [call] = parse_tool_calls('Hi <tool_call>\n{"name": "f", "arguments": {"a": "b"}}\n')
    assert call.name == "f" and call.arguments == '{"a": "b"}'
    cut = 'Hi <tool_call>\n{"name": "f", "arguments": {"a": "b'
    assert parse_tool_calls(cut) == (cut, [])


def test_stray_tags_are_content():
    assert parse_tool_calls("a </tool_call> b") == ("a </tool_call> b", [])


def test_tool_call_ids_are_generated_unless_given():
    assert ToolCall("f", "{}", "call_x").id == "call_x"
    assert ToolCall("f", "{}").id != ToolCall("f", "{}").id


# ---------------------------------------------------------------------------- streaming

@pytest.mark.parametrize("text", SAMPLES)
def test_stream_matches_whole_parse_at_every_split_point(text):
    assert_same_as_whole(text, [text])
    assert_same_as_whole(text, list(text))
    for k in range(len(text) + 1):
        assert_same_as_whole(text, [text[:k], text[k:]])


@pytest.mark.parametrize("seed", range(20))
def test_stream_matches_whole_parse_in_random_pieces(seed):
    rng = random.Random(seed)
    text = "".join(rng.choice(SAMPLES[3:6] + ["x", " ", "\n", "<", "<tool_call", "</tool_call>"]) for _ in range(8))
    cuts = sorted(rng.sample(range(len(text) + 1), min(len(text) + 1, rng.randint(1, 12))))
    pieces = [text[a:b] for a, b in zip([0] + cuts, cuts + [len(text)])]
    # pieces of random text can make a block malformed after its start: then only the content before it is
    # guaranteed; when nothing is malformed, everything matches
    content, calls, parser = stream(pieces)
    if not parser.malformed:
        assert_same_as_whole(text, pieces)


def test_arguments_stream_as_written_without_the_outer_brace_or_trailing_whitespace():
    _, calls, _ = stream(list(TRICKY))
    [(_, name, arguments)] = calls.values()
    start = TRICKY.index('{"path"')
    assert name == "write_file" and arguments == TRICKY[start:TRICKY.rindex("}}") + 1]


def test_content_is_released_as_soon_as_it_cannot_start_a_tag():
    p = ToolCallStreamParser()
    assert p.feed("Hello <to") == [ContentDelta("Hello")]        # " <to" may be a tag (the space: stripped)
    assert p.feed("day") == [ContentDelta(" <today")]
    assert p.feed(" ok\n<tool_call>") == [ContentDelta(" ok")]
    [start] = p.feed('{"name": "f", "argu')
    assert start == ToolCallStart(0, start.id, "f")
    assert p.feed('ments": {"a": [1') == [ArgumentsDelta(0, '{"a": [1')]
    assert p.feed(']}}\n</tool') == [ArgumentsDelta(0, "]}")]
    assert p.feed("_call>\n") == []
    assert p.finish() == []
    assert [(c.id, c.name, c.arguments) for c in p.calls] == [(start.id, "f", '{"a": [1]}')]


def test_a_block_without_a_name_comes_out_as_content_when_it_closes():
    p = ToolCallStreamParser()
    assert p.feed('x <tool_call>{"arguments": {}, "na') == [ContentDelta("x")]
    events = p.feed('me": 7}</tool_call> y')
    assert "".join(e.text for e in events) == ' <tool_call>{"arguments": {}, "name": 7}</tool_call> y'
    assert p.finish() == [] and p.calls == [] and p.malformed == []


def test_an_unterminated_broken_block_comes_out_at_finish():
    p = ToolCallStreamParser()
    assert p.feed('<tool_call>\n{"oops') == []
    assert p.finish() == [ContentDelta('<tool_call>\n{"oops')]


def test_a_block_broken_after_its_start_is_dropped_and_reported():
    text = 'A <tool_call>\n{"name": "f", "arguments": [1, 2]}\n</tool_call> B ' + WEATHER
    content, calls, parser = stream(list(text))
    assert content == "A  B"
    assert [c[1] for c in calls.values()] == ["f", "get_weather"]
    assert calls[0][2] == ""                                      # no arguments went out for it
    assert parser.malformed == [0] and [c.name for c in parser.calls] == ["get_weather"]
    assert parse_tool_calls(text)[0].startswith("A <tool_call>")  # the documented difference

    broken = '<tool_call>\n{"name": "f", "arguments": {"a": 1,,}}\n</tool_call>'
    content, calls, parser = stream([broken])
    assert content == "" and calls[0][2] == '{"a": 1,,}' and parser.malformed == [0]

    cut = 'Hi <tool_call>\n{"name": "f", "arguments": {"a": "b'    # max tokens: the call stays, incomplete
    content, calls, parser = stream(list(cut))
    assert content == "Hi" and calls[0][1:] == ("f", '{"a": "b') and parser.malformed == [0]


def test_a_repeated_key_that_changes_the_call_marks_it_malformed():
    text = '<tool_call>{"name": "f", "arguments": {"a": 1}, "arguments": {"a": 2}}</tool_call>'
    _, calls, parser = stream([text])
    assert parser.malformed == [0] and parser.calls == []
    assert parse_tool_calls(text)[1][0].arguments == '{"a": 2}'


# ---------------------------------------------------------------------------- grammar: checks

TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"$ref": "#/$defs/unit"}},
                       "required": ["city"], "additionalProperties": False,
                       "$defs": {"unit": {"enum": ["c", "f"]}}}}},
    {"type": "function", "function": {
        "name": "get_time",
        "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}, "required": ["tz"]}}},
    {"type": "function", "function": {"name": "now"}},                         # no parameters
]
NAMED = {"type": "function", "function": {"name": "get_time"}}


@pytest.mark.parametrize("tools, choice, message", [
    (TOOLS, {"type": "function", "function": {"name": "nope"}}, "'nope', which is not among the tools"),
    (TOOLS, {"type": "function"}, "named tool_choice"),
    (TOOLS, {"type": "tool", "function": {"name": "now"}}, "named tool_choice"),
    (TOOLS, "any", "tool_choice must be"),
    (TOOLS, None, "tool_choice must be"),
    ([], "required", "at least one tool"),
    ({"type": "function"}, "required", "tools must be a list"),
    (["get_weather"], "auto", r"tools\[0\] must be"),
    ([{"type": "function", "function": "f"}], "auto", r"tools\[0\] must be"),
    ([{"function": {"name": "f"}}], "auto", r"tools\[0\] must be"),
    ([{"type": "function", "function": {"name": 3}}], "required", "name must be a non-empty string"),
    ([{"type": "function", "function": {"name": "f", "parameters": []}}], "required", "parameters must be"),
    (TOOLS + TOOLS[:1], "required", "two tools are named 'get_weather'"),
])
def test_bad_tools_and_choices_are_refused(tools, choice, message):
    with pytest.raises(ToolCallError, match=message):
        tool_call_grammar(tools, choice, 151657, 151658)


def test_auto_and_none_impose_nothing():
    assert tool_call_grammar(TOOLS, "auto", 151657, 151658) is None
    assert tool_call_grammar(None, "none", None, None) is None


def test_bad_token_ids_are_refused():
    with pytest.raises(ToolCallError, match="non-negative integer"):
        tool_call_grammar(TOOLS, "required", -1, 151658)
    with pytest.raises(ToolCallError, match="non-negative integer"):
        tool_call_grammar(TOOLS, "required", 151657, "151658")


def test_grammar_text():
    grammar = tool_call_grammar(TOOLS, NAMED, 151657, 151658)
    assert grammar.startswith('start: <[151657]> "\\n" call "\\n" <[151658]>\n')
    assert '"{\\"name\\": \\"get_time\\", \\"arguments\\": "' in grammar and "get_weather" not in grammar
    literal = tool_call_grammar(TOOLS, "required", None, None)
    assert literal.startswith('start: "<tool_call>" "\\n" call "\\n" "</tool_call>"\n')
    assert literal.count("%json") == 3 and '"properties": {}' in literal


# ---------------------------------------------------------------------------- grammar: llguidance

@pytest.fixture(scope="module")
def qwen():
    """(engine tokenizer, llguidance tokenizer) of Qwen2.5-Coder-0.5B."""
    from engine.gguf_file import GGUFFile
    from engine.model_registry import ModelUnavailable, resolve_model
    from engine.tokenizer import CONTROL, USER_DEFINED, Tokenizer
    llguidance = pytest.importorskip("llguidance")
    try:
        path = resolve_model("qwen2.5-coder-0.5b-instruct")
    except ModelUnavailable as e:
        pytest.skip(str(e))
    tok = Tokenizer.from_gguf(GGUFFile.open(str(path)))

    class View:                         # what LLTokenizer reads
        is_tokenizer_wrapper = True

        def __init__(self, t):
            self.eos_token_id, self.bos_token_id = t.special.eos_id, t.special.bos_id
            special = [ty == CONTROL or (ty == USER_DEFINED and b.startswith(b"<") and b.endswith(b">"))
                       for b, ty in zip(t.token_bytes, t.token_types)]
            self.tokens = [b"\xff" + b if s else b for b, s in zip(t.token_bytes, special)]
            self.special_token_ids = [i for i, ty in enumerate(t.token_types) if ty == CONTROL]
            self._t = t

        def __call__(self, s):
            return self._t.encode(s.decode("utf-8", "replace") if isinstance(s, bytes) else s, add_bos=False)

    llt = llguidance.LLTokenizer(View(tok), eos_token=sorted(tok.special.end_of_generation_ids))
    return tok, llt


def ids_of(qwen, tag):
    return qwen[0].encode(tag, add_bos=False)[0]


def accepts(qwen, grammar, text):
    """Whether the grammar lets the model write text (as the tokenizer encodes it), to the end."""
    from llguidance import LLMatcher
    tok, llt = qwen
    compiled = LLMatcher.grammar_from_lark(grammar)
    assert LLMatcher.validate_grammar(compiled, llt) == ""
    matcher = LLMatcher(llt, compiled, log_level=0)
    assert not matcher.is_error(), matcher.get_error()
    return all(matcher.consume_token(t) for t in tok.encode(text, add_bos=False)) and matcher.is_accepting()


def block(name, arguments):
    return f'{OPEN_TAG}\n{{"name": "{name}", "arguments": {arguments}}}\n{CLOSE_TAG}'


def test_tags_are_single_tokens(qwen):
    assert qwen[0].encode(OPEN_TAG + CLOSE_TAG, add_bos=False) == [151657, 151658]


def test_required_accepts_a_valid_call_to_any_tool_and_nothing_else(qwen):
    grammar = tool_call_grammar(TOOLS, "required", ids_of(qwen, OPEN_TAG), ids_of(qwen, CLOSE_TAG))
    for text in (block("get_weather", '{"city": "Paris"}'), block("get_weather", '{"city": "Paris", "unit": "f"}'),
                 block("get_time", '{"tz": "UTC"}'), block("now", "{}"), block("now", '{"anything": [1, 2]}')):
        assert accepts(qwen, grammar, text), text
        [call] = parse_tool_calls(text)[1]                    # and what it forces parses back
        assert json.loads(call.arguments) == json.loads(text[text.index('"arguments": ') + 13:text.rindex("}")])
    for text in (block("get_wether", '{"city": "Paris"}'),           # unknown name
                 block("get_weather", '{"town": "Paris"}'),          # a property the schema forbids
                 block("get_weather", '{"city": "Paris", "unit": "k"}'),   # outside the $ref'd enum
                 block("get_weather", '{"city": 3}'),
                 block("get_time", "{}"),                            # required property missing
                 block("get_time", '{"tz":"UTC"}'),                  # not the one-line layout
                 'Sure! ' + block("now", "{}"),                      # text before the block
                 block("now", "{}") + block("now", "{}"),            # a second block
                 block("now", "{}")[:-len(CLOSE_TAG)]):              # unfinished
        assert not accepts(qwen, grammar, text), text


def test_a_named_choice_accepts_that_tool_only(qwen):
    grammar = tool_call_grammar(TOOLS, NAMED, ids_of(qwen, OPEN_TAG), ids_of(qwen, CLOSE_TAG))
    assert accepts(qwen, grammar, block("get_time", '{"tz": "Europe/Paris"}'))
    assert not accepts(qwen, grammar, block("get_weather", '{"city": "Paris"}'))
    assert not accepts(qwen, grammar, block("get_time", '{"tz": 1}'))


def test_odd_names_and_literal_tags_compile(qwen):
    from llguidance import LLMatcher
    odd = [{"type": "function", "function": {"name": 'say "hi" \\ 日本', "parameters": {"type": "object"}}}]
    grammar = tool_call_grammar(odd, "required", 151657, 151658)
    assert accepts(qwen, grammar, f'{OPEN_TAG}\n{{"name": "say \\"hi\\" \\\\ 日本", "arguments": {{}}}}\n{CLOSE_TAG}')
    literal = tool_call_grammar(TOOLS, "required", None, None)
    assert LLMatcher.validate_grammar(LLMatcher.grammar_from_lark(literal), qwen[1]) == ""
    # the literal text is spelled with ordinary tokens, so the special token itself is refused
    assert not accepts(qwen, literal, block("now", "{}"))

"""Tool calls in a model's output (the Hermes format of Qwen2.5's chat template), parsed whole or
as they stream, and the grammar that forces one when the request requires it.

The chat template, rendered with `tools`, tells the model to answer a call as

    <tool_call>
    {"name": <function-name>, "arguments": <args-json-object>}
    </tool_call>

one or more such blocks, possibly after some text; "<tool_call>" and "</tool_call>" are single
user-defined tokens whose text appears in the decoded output. vLLM's `hermes` parser reads the
same format. The rules, shared by parse_tool_calls and ToolCallStreamParser:

- a block runs from "<tool_call>" to the next "</tool_call>", or to the end of the text when the
  generation was cut (max tokens): such an unterminated block counts when its JSON is complete;
- a block is a call when its text is one JSON object with a non-empty string "name" and an
  "arguments" object; "arguments" may also be a JSON string holding an object (some models write
  that), and a missing or null "arguments" is {} (a function without parameters);
- any other block stays in the content, tags and all, as the model wrote it: nothing is dropped;
- the content is the text outside the call blocks, stripped of leading and trailing whitespace;
- parse_bare_call also reads an output that is nothing but the call's JSON, tags left out (what
  small models often write), when the name is one of the offered tools.

ToolCall.arguments is the arguments object as json.dumps(obj, ensure_ascii=False) writes it,
OpenAI's `function.arguments` string.

tool_call_grammar turns tool_choice "required" or a named function into a Lark grammar in
llguidance's dialect (engine.constraints compiles and enforces it): exactly one block, its
arguments held to the tool's "parameters" JSON schema.
"""
from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field

from .constraints import JSON_LAYOUT

OPEN_TAG = "<tool_call>"
CLOSE_TAG = "</tool_call>"
# The schema a function without "parameters" takes (OpenAI's reading: no arguments declared).
EMPTY_PARAMETERS = {"type": "object", "properties": {}}
_JSON_WHITESPACE = " \t\n\r"


class ToolCallError(ValueError):
    """The tools or the tool_choice of a request are malformed."""


def new_call_id() -> str:
    return "call_" + secrets.token_hex(12)


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str                                  # JSON text of the arguments object
    id: str = field(default_factory=new_call_id)

    def as_dict(self) -> dict:
        """As OpenAI writes it in a message's `tool_calls`."""
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


def _decode_call(body: str) -> tuple[str, dict] | None:
    """(name, arguments) of a block's text, or None when the block is not a call."""
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(obj, dict):
        return None
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        return None
    arguments = obj.get("arguments")
    if arguments is None:
        arguments = {}
    elif isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except (ValueError, RecursionError):
            return None
    if not isinstance(arguments, dict):
        return None
    return name, arguments


def _compact(arguments: dict) -> str:
    return json.dumps(arguments, ensure_ascii=False)


def parse_tool_calls(text: str) -> tuple[str, list[ToolCall]]:
    """(content, calls) of a whole output; content "" when there is none, calls [] when none."""
    content: list[str] = []
    calls: list[ToolCall] = []
    pos = 0
    while (start := text.find(OPEN_TAG, pos)) >= 0:
        content.append(text[pos:start])
        body_start = start + len(OPEN_TAG)
        end = text.find(CLOSE_TAG, body_start)
        body_end, pos = (end, end + len(CLOSE_TAG)) if end >= 0 else (len(text), len(text))
        call = _decode_call(text[body_start:body_end])
        if call is None:
            content.append(text[start:pos])
        else:
            calls.append(ToolCall(call[0], _compact(call[1])))
    content.append(text[pos:])
    return "".join(content).strip(), calls


def parse_bare_call(text: str, names: Sequence[str]) -> ToolCall | None:
    """A call written without the tags: the whole output (whitespace aside) one JSON object
    {"name": N, "arguments": {...}} whose N is one of the offered tools. Small models (Qwen2.5-
    Coder-0.5B) often answer so; anything else, such as JSON the user asked for, is not a call."""
    stripped = text.strip()
    if not (stripped.startswith("{") and stripped.endswith("}")):
        return None
    call = _decode_call(stripped)
    if call is None or call[0] not in names:
        return None
    return ToolCall(call[0], _compact(call[1]))


# ---------------------------------------------------------------------------- streaming

@dataclass(frozen=True)
class ContentDelta:
    text: str


@dataclass(frozen=True)
class ToolCallStart:
    index: int                   # 0, 1, ... in the order the calls' names completed
    id: str
    name: str


@dataclass(frozen=True)
class ArgumentsDelta:
    index: int
    text: str


StreamEvent = ContentDelta | ToolCallStart | ArgumentsDelta

# Where the scanner of a block's top-level object is
(_OBJECT, _FIRST_KEY, _KEY, _KEY_STRING, _COLON, _VALUE, _NAME_STRING, _SKIP_VALUE, _ARGUMENTS, _NEXT, _DONE,
 _BAD) = range(12)


def _partial_tag(text: str, tag: str) -> int:
    """Length of the longest end of text that is a proper beginning of tag."""
    for n in range(min(len(text), len(tag) - 1), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


class _Block:
    """One block's text as it arrives, scanned just enough to know the name and where the arguments
    value starts and ends; json.loads has the last word when the block closes."""

    def __init__(self):
        self.body: list[str] = []
        self.state = _OBJECT
        self.key = ""
        self.string: list[str] = []          # the key or name string being read, raw
        self.escaped = False
        self.in_string = False               # inside a string of the value being read
        self.depth = 0                       # brackets open in the value being read
        self.scalar = False                  # the value being read is a number or a literal
        self.seen_name = self.seen_arguments = False
        self.id = new_call_id()
        self.name: str | None = None
        self.index: int | None = None        # set at ToolCallStart
        self.arguments: list[str] = []       # arguments text streamed (or held until the name is known)
        self.sent = 0                        # how many of those pieces went out in ArgumentsDelta events

    def feed(self, text: str, parser: ToolCallStreamParser, events: list) -> None:
        self.body.append(text)
        i, n = 0, len(text)
        while i < n:
            state, ch = self.state, text[i]
            if state == _BAD:
                break
            if state in (_OBJECT, _FIRST_KEY, _KEY, _COLON, _VALUE, _NEXT, _DONE) and ch in _JSON_WHITESPACE:
                i += 1
                continue
            if state == _OBJECT:
                self.state = _FIRST_KEY if ch == "{" else _BAD
            elif state in (_FIRST_KEY, _KEY):
                if ch == '"':
                    self.state, self.string, self.escaped = _KEY_STRING, [], False
                else:
                    self.state = _DONE if ch == "}" and state == _FIRST_KEY else _BAD
            elif state in (_KEY_STRING, _NAME_STRING):
                j = self._string_end(text, i)
                if j < 0:
                    self.string.append(text[i:])
                    break
                self.string.append(text[i:j])
                i = j + 1
                raw = '"' + "".join(self.string) + '"'
                if state == _KEY_STRING:
                    try:
                        self.key, self.state = json.loads(raw), _COLON
                    except ValueError:
                        self.state = _BAD
                    continue
                self.state = _NEXT
                try:
                    name = json.loads(raw)
                except ValueError:
                    name = ""
                if name and self.index is None:
                    parser._start(self, name, events)
                continue
            elif state == _COLON:
                self.state = _VALUE if ch == ":" else _BAD
            elif state == _VALUE:
                if self.key == "name" and not self.seen_name and ch == '"':
                    self.seen_name = True
                    self.state, self.string, self.escaped = _NAME_STRING, [], False
                else:
                    streamed = self.key == "arguments" and not self.seen_arguments and ch == "{"
                    self.seen_name |= self.key == "name"
                    self.seen_arguments |= self.key == "arguments"
                    self.state = _ARGUMENTS if streamed else _SKIP_VALUE
                    self.in_string, self.escaped, self.depth = False, False, 0
                    self.scalar = ch not in '"{['
                    continue                 # the value scanner reads ch too
            elif state in (_SKIP_VALUE, _ARGUMENTS):
                j = self._value_end(text, i)
                if state == _ARGUMENTS and j > i:
                    self.arguments.append(text[i:j])
                if j == n and self.state != _NEXT:
                    break
                i = j
                continue
            elif state == _NEXT:
                self.state = _KEY if ch == "," else _DONE if ch == "}" else _BAD
            elif state == _DONE:
                self.state = _BAD
            i += 1
        self.flush(events)

    def _string_end(self, text: str, i: int) -> int:
        """Index of the closing quote of the string being read, -1 if it is not in text yet."""
        for j in range(i, len(text)):
            ch = text[j]
            if self.escaped:
                self.escaped = False
            elif ch == "\\":
                self.escaped = True
            elif ch == '"':
                return j
        return -1

    def _value_end(self, text: str, i: int) -> int:
        """Index just past the value being read, with state _NEXT once it ended (len(text) if not)."""
        for j in range(i, len(text)):
            ch = text[j]
            if self.scalar:
                if ch in _JSON_WHITESPACE or ch in ",}]":
                    self.state = _NEXT
                    return j                 # the delimiter is not part of the value
            elif self.in_string:
                if self.escaped:
                    self.escaped = False
                elif ch == "\\":
                    self.escaped = True
                elif ch == '"':
                    self.in_string = False
                    if self.depth == 0:
                        self.state = _NEXT
                        return j + 1
            elif ch == '"':
                self.in_string = True
            elif ch in "{[":
                self.depth += 1
            elif ch in "}]":
                self.depth -= 1
                if self.depth == 0:
                    self.state = _NEXT
                    return j + 1
        return len(text)

    def flush(self, events: list) -> None:
        if self.index is not None and self.sent < len(self.arguments):
            events.append(ArgumentsDelta(self.index, "".join(self.arguments[self.sent:])))
            self.sent = len(self.arguments)


class ToolCallStreamParser:
    """parse_tool_calls for text that arrives in pieces, as events.

    feed(delta) returns what the new text settles: ContentDelta for content, held back only where
    it could be the start of "<tool_call>" or is whitespace that would be stripped if nothing but
    calls followed; ToolCallStart once a call's name is complete; ArgumentsDelta with the text of
    its "arguments" object as it arrives (not the outer object's closing brace, nor what follows).
    finish() returns what the end of the generation settles, and must be called once.

    However the text is split, the ContentDelta texts join into parse_tool_calls' content, and a
    call's ArgumentsDelta texts join into JSON that loads to its arguments: the object exactly as
    the model wrote it, which is not always ToolCall.arguments' layout. Arguments written as a JSON
    string, missing, or null come in one ArgumentsDelta when the block closes, in the compact form.

    A block that is not a call comes out as content when it closes, if its name had not completed.
    If it had, the ToolCallStart and the arguments text sent cannot be taken back: the block is
    dropped, its index is in `malformed`, and parse_tool_calls would differ (it keeps such a block
    as content). `calls` lists the calls that closed well, with the ids their ToolCallStart gave.
    """

    def __init__(self):
        self._pending = ""                # text not yet settled: a partial tag
        self._block: _Block | None = None
        self._space = ""                  # whitespace after the content released so far
        self._content_started = False
        self._next_index = 0
        self.calls: list[ToolCall] = []
        self.malformed: list[int] = []

    def feed(self, delta: str) -> list[StreamEvent]:
        events: list[StreamEvent] = []
        text = self._pending + delta
        while True:
            tag = CLOSE_TAG if self._block else OPEN_TAG
            at = text.find(tag)
            if at < 0:
                keep = _partial_tag(text, tag)
                self._pending = text[len(text) - keep:]
                self._take(text[:len(text) - keep], events)
                return events
            self._take(text[:at], events)
            text = text[at + len(tag):]
            if self._block:
                self._close(events, terminated=True)
            else:
                self._block = _Block()

    def finish(self) -> list[StreamEvent]:
        events: list[StreamEvent] = []
        text, self._pending = self._pending, ""
        self._take(text, events)
        if self._block:
            self._close(events, terminated=False)
        self._space = ""
        return events

    def _take(self, text: str, events: list) -> None:
        if self._block:
            if text:
                self._block.feed(text, self, events)
            return
        if not self._content_started:
            text = text.lstrip()
        body = text.rstrip()
        if body:
            events.append(ContentDelta(self._space + body))
            self._content_started = True
            self._space = text[len(body):]
        else:
            self._space += text

    def _start(self, block: _Block, name: str, events: list) -> None:
        block.name, block.index = name, self._next_index
        self._next_index += 1
        events.append(ToolCallStart(block.index, block.id, name))

    def _close(self, events: list, terminated: bool) -> None:
        block, self._block = self._block, None
        body = "".join(block.body)
        call = _decode_call(body)
        if call is None:
            if block.index is None:
                self._take(OPEN_TAG + body + (CLOSE_TAG if terminated else ""), events)
            else:
                block.flush(events)
                self.malformed.append(block.index)
            return
        name, arguments = call
        if block.index is None:
            self._start(block, name, events)
        if not block.arguments:                 # a string, null or missing: sent now, compact
            block.arguments.append(_compact(arguments))
        block.flush(events)
        try:
            streamed = _compact(json.loads("".join(block.arguments)))
        except (ValueError, RecursionError):
            streamed = None
        if name != block.name or streamed != _compact(arguments):    # a repeated key won
            self.malformed.append(block.index)
        else:
            self.calls.append(ToolCall(name, _compact(arguments), block.id))


# ---------------------------------------------------------------------------- grammar

def tool_call_grammar(tools: Sequence[dict] | None, choice: str | dict,
                      open_token_id: int | None, close_token_id: int | None) -> str | None:
    """The Lark grammar (llguidance's dialect) that tool_choice `choice` imposes on the output, or
    None when it imposes nothing ("auto", "none").

    "required": one call to any of the tools; {"type": "function", "function": {"name": N}}: one
    call to N. The output is then exactly OPEN "\\n" {"name": N, "arguments": ARGS} "\\n" CLOSE,
    where OPEN and CLOSE are the special tokens with these ids (the literal texts "<tool_call>" and
    "</tool_call>" where an id is None) and ARGS is a JSON object that validates against N's
    "parameters" schema, written on one line with ", " and ": " unless the schema's "x-guidance"
    says otherwise. Whether llguidance supports every keyword of a schema shows when the grammar
    is compiled (LLMatcher.validate_grammar), not here.
    """
    parameters = _tool_parameters(tools)
    if isinstance(choice, str) and choice in ("auto", "none"):
        return None
    if isinstance(choice, str) and choice == "required":
        if not parameters:
            raise ToolCallError('tool_choice "required" needs at least one tool')
        names = list(parameters)
    elif isinstance(choice, dict):
        names = [_chosen_name(choice)]
        if names[0] not in parameters:
            known = ", ".join(parameters) or "none"
            raise ToolCallError(f"tool_choice names the function {names[0]!r}, which is not among the tools "
                                f"(known: {known})")
    else:
        raise ToolCallError('tool_choice must be "auto", "none", "required" or '
                            f'{{"type": "function", "function": {{"name": ...}}}}; got {choice!r}')
    open_tag, close_tag = _tag(open_token_id, OPEN_TAG), _tag(close_token_id, CLOSE_TAG)
    lines = [f'start: {open_tag} "\\n" call "\\n" {close_tag}',
             "call: " + " | ".join(f"call_{i}" for i in range(len(names)))]
    for i, name in enumerate(names):
        schema = dict(parameters[name])
        options = schema.get("x-guidance")
        # one line with ", " and ": " (json.dumps' layout, which the template renders past calls in);
        # the schema's own "x-guidance" options win
        schema["x-guidance"] = {**JSON_LAYOUT, **(options if isinstance(options, dict) else {})}
        # One %json per tool, after the name: a schema's "$ref"s stay relative to its own root.
        head = '{"name": ' + json.dumps(name, ensure_ascii=False) + ', "arguments": '
        lines.append(f'call_{i}: {json.dumps(head, ensure_ascii=False)} args_{i} "}}"')
        lines.append(f"args_{i}: %json {json.dumps(schema)}")
    return "\n".join(lines) + "\n"


def _tag(token_id: int | None, text: str) -> str:
    if token_id is None:
        return json.dumps(text)
    if isinstance(token_id, bool) or not isinstance(token_id, int) or token_id < 0:
        raise ToolCallError(f"the id of the {text} token must be a non-negative integer or None, got {token_id!r}")
    return f"<[{token_id}]>"


def _tool_parameters(tools: Sequence[dict] | None) -> dict[str, dict]:
    """{name: parameters schema} of a request's tools, or ToolCallError."""
    if tools is None:
        return {}
    if isinstance(tools, (str, bytes, dict)) or not isinstance(tools, Sequence):
        raise ToolCallError('tools must be a list of {"type": "function", "function": {...}} objects')
    found: dict[str, dict] = {}
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(tool.get("function"), dict):
            raise ToolCallError(f'tools[{i}] must be {{"type": "function", "function": {{"name": ..., '
                                f'"parameters": ...}}}}')
        function = tool["function"]
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise ToolCallError(f"tools[{i}].function.name must be a non-empty string, got {name!r}")
        schema = function.get("parameters")
        if schema is None:
            schema = EMPTY_PARAMETERS
        elif not isinstance(schema, dict):
            raise ToolCallError(f"tools[{i}] ({name}): parameters must be a JSON schema object, "
                                f"got {type(schema).__name__}")
        if name in found:
            raise ToolCallError(f"two tools are named {name!r}")
        found[name] = schema
    return found


def _chosen_name(choice: dict) -> str:
    function = choice.get("function")
    name = function.get("name") if isinstance(function, dict) else None
    if choice.get("type") != "function" or not isinstance(name, str) or not name:
        raise ToolCallError('a named tool_choice must be {"type": "function", "function": {"name": ...}}; '
                            f"got {json.dumps(choice, default=str)}")
    return name

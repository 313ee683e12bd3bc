"""Tool calls on the Generation service: a chat's tools and tool_choice become what the chat
template shows and, when a call is required, a constraint; the answer's calls are parsed from
its text (engine/tool_calls.py: the Hermes <tool_call> format of Qwen2.5's template).

- auto (the default when tools are given): the template lists the tools; the answer's calls are
  parsed, and an answer that holds any ends with FINISH_REASON_TOOL_CALLS;
- none: the template is rendered without the tools (the model cannot call what it is not shown);
- required / a named function: also constrained to exactly one call (to any tool, or to that
  one) whose arguments validate against the tool's parameters schema.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from engine.constraints import OutputConstraint
from engine.tokenizer import CONTROL, USER_DEFINED, Tokenizer
from engine.tool_calls import (
    CLOSE_TAG,
    OPEN_TAG,
    ToolCall,
    ToolCallError,
    parse_bare_call,
    parse_tool_calls,
    tool_call_grammar,
)

from ..api import common_pb2
from ..api import generation_pb2 as pb
from ..common.errors import InvalidRequest

MAX_TOOLS = 128
_CHOICES = {pb.TOOL_CHOICE_AUTO: "auto", pb.TOOL_CHOICE_NONE: "none", pb.TOOL_CHOICE_REQUIRED: "required"}


@dataclass(frozen=True)
class ToolPlan:
    template_tools: list[dict] | None        # what the chat template gets as `tools`
    names: tuple[str, ...]                   # the tools' names
    parse_calls: bool                        # look for calls in the answer
    constraint: OutputConstraint | None      # one call forced (required / named)


NO_TOOLS = ToolPlan(None, (), False, None)


class ToolSupport:
    """What one model can do with tools: its template's support and its tag tokens."""

    def __init__(self, tokenizer: Tokenizer):
        self.template_has_tools = "tools" in (tokenizer.chat_template or "")
        self.model_name = tokenizer.model_name
        specials = {tokenizer.pieces[i]: i for i, t in enumerate(tokenizer.token_types) if t in (CONTROL, USER_DEFINED)}
        self.open_id, self.close_id = specials.get(OPEN_TAG), specials.get(CLOSE_TAG)

    def plan(self, chat) -> ToolPlan:
        """The plan of a GenerateRequest.chat, or InvalidRequest."""
        choice = chat.tool_choice
        if not chat.tools:
            if choice.mode not in (pb.TOOL_CHOICE_AUTO, pb.TOOL_CHOICE_NONE):
                raise InvalidRequest("tool_choice requires a call, but the chat has no tools")
            return NO_TOOLS
        if len(chat.tools) > MAX_TOOLS:
            raise InvalidRequest(f"the chat has {len(chat.tools)} tools; the limit is {MAX_TOOLS}")
        if not self.template_has_tools:
            raise InvalidRequest(f"this model's chat template ({self.model_name}) has no tool calling; "
                                 "send the chat without tools")
        tools = [tool_from_pb(i, t) for i, t in enumerate(chat.tools)]
        if choice.mode == pb.TOOL_CHOICE_FUNCTION:
            wanted: str | dict = {"type": "function", "function": {"name": choice.function_name}}
        elif choice.mode in _CHOICES:
            wanted = _CHOICES[choice.mode]
        else:
            raise InvalidRequest(f"unknown tool_choice mode {choice.mode}")
        try:
            grammar = tool_call_grammar(tools, wanted, self.open_id, self.close_id)
        except ToolCallError as e:
            raise InvalidRequest(str(e)) from e
        if wanted == "none":
            return NO_TOOLS
        names = tuple(t["function"]["name"] for t in tools)
        return ToolPlan(tools, names, True, OutputConstraint("lark", grammar) if grammar else None)


def tool_from_pb(index: int, tool) -> dict:
    """A Tool message as the chat template and tool_call_grammar take it (OpenAI's layout)."""
    function: dict = {"name": tool.name}
    if tool.description:
        function["description"] = tool.description
    if tool.parameters:
        try:
            function["parameters"] = json.loads(tool.parameters)
        except json.JSONDecodeError as e:
            raise InvalidRequest(f"tools[{index}] ({tool.name}): parameters is not valid JSON: {e}") from e
    return {"type": "function", "function": function}


def calls_of(text: str, plan: ToolPlan) -> tuple[str, list[common_pb2.ToolCall]]:
    """(the text besides the calls, the calls) of a finished answer: <tool_call> blocks, or an
    answer that is one call's JSON without them (parse_bare_call)."""
    content, calls = parse_tool_calls(text)
    if not calls and (bare := parse_bare_call(text, plan.names)) is not None:
        content, calls = "", [bare]
    return content, [call_pb(c) for c in calls]


def call_pb(call: ToolCall) -> common_pb2.ToolCall:
    return common_pb2.ToolCall(id=call.id, name=call.name, arguments=call.arguments)

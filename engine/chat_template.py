"""Chat templates (the GGUF's `tokenizer.chat_template`) rendered in a sandboxed jinja2.

The environment matches what Hugging Face renders templates with (trim_blocks, lstrip_blocks,
loop controls, `raise_exception`, `tojson`, `strftime_now`), and is an ImmutableSandboxedEnvironment:
a template cannot reach Python internals or mutate what it is given. Message contents are data,
never template source, so text in a message is not evaluated.
"""
from __future__ import annotations

import datetime
import json
from collections.abc import Sequence
from dataclasses import dataclass

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

VALID_ROLES = ("system", "user", "assistant", "tool")
# What a message may carry besides role and content, as OpenAI and transformers spell it
_MESSAGE_FIELDS = ("tool_calls", "tool_call_id", "name")


class ChatTemplateError(ValueError):
    """The messages cannot be rendered: bad roles or contents, the template refused them, or the
    model has no chat template at all."""


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str | None = ""
    # an assistant's calls: [{"type": "function", "function": {"name": ..., "arguments": {...}}}]
    tool_calls: Sequence[dict] | None = None
    tool_call_id: str | None = None      # role "tool": the call this message answers
    name: str | None = None              # role "tool": the function that answered

    def as_dict(self) -> dict:
        fields = {"role": self.role, "content": self.content}
        fields.update({k: getattr(self, k) for k in _MESSAGE_FIELDS if getattr(self, k) is not None})
        return fields


def _raise_exception(message):
    raise ChatTemplateError(str(message))


def _tojson(value, indent=None, ensure_ascii=False, sort_keys=False):
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii, sort_keys=sort_keys)


def _strftime_now(fmt):
    return datetime.datetime.now().strftime(fmt)


class ChatTemplate:
    """source None: the model has no chat template (a base model); render then refuses, rather than
    guessing a format the model was never trained on (transformers refuses too; llama.cpp guesses
    ChatML)."""

    def __init__(self, source: str | None, bos_token: str = "", eos_token: str = "",
                 model_name: str = ""):
        self.source = source or None
        self.model_name = model_name
        self.bos_token = bos_token
        self.eos_token = eos_token
        self._template = None
        if self.source is None:
            return
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                            extensions=["jinja2.ext.loopcontrols"])
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = _strftime_now
        try:
            self._template = env.from_string(self.source)
        except jinja2.TemplateError as e:
            raise ChatTemplateError(f"the model's chat template does not parse: {e}") from e

    @classmethod
    def of_tokenizer(cls, tokenizer) -> ChatTemplate:
        """The template a GGUF's tokenizer carries, with its BOS and EOS texts (engine.tokenizer.Tokenizer)."""
        def piece(token_id):
            return tokenizer.pieces[token_id] if token_id is not None else ""
        special = tokenizer.special
        return cls(tokenizer.chat_template, piece(special.bos_id), piece(special.eos_id), tokenizer.model_name)

    @property
    def has_template(self) -> bool:
        return self._template is not None

    def render(self, messages: Sequence[ChatMessage | dict], add_generation_prompt: bool = True,
               tools: Sequence[dict] | None = None) -> str:
        """The prompt text, as transformers' apply_chat_template(tokenize=False) renders it.

        tools: JSON-schema function descriptions ({"type": "function", "function": {...}}), given to
        the template as `tools`, as transformers does.
        """
        if self._template is None:
            name = self.model_name or "this model"
            raise ChatTemplateError(f"this model ({name}, a base model) has no chat template; send plain text")
        if not messages:
            raise ChatTemplateError("a chat needs at least one message")
        plain = [_plain_message(i, m) for i, m in enumerate(messages)]
        if tools is not None:
            if isinstance(tools, (str, bytes, dict)) or not all(isinstance(t, dict) for t in tools):
                raise ChatTemplateError("tools must be a list of JSON-schema objects")
            tools = _plain_data(list(tools), "tools")
        try:
            return self._template.render(messages=plain, tools=tools, add_generation_prompt=add_generation_prompt,
                                         bos_token=self.bos_token, eos_token=self.eos_token)
        except ChatTemplateError:
            raise
        except jinja2.exceptions.SecurityError as e:
            raise ChatTemplateError(f"the chat template tried something unsafe: {e}") from e
        except jinja2.TemplateError as e:
            raise ChatTemplateError(f"the chat template failed on these messages: {e}") from e
        except (TypeError, ValueError) as e:        # e.g. tojson on a value JSON cannot hold
            raise ChatTemplateError(f"the chat template failed on these messages: {e}") from e


def _plain_message(i: int, message: ChatMessage | dict) -> dict:
    """A fresh dict of plain data: the template sees only what a JSON request could carry, and the
    keys the caller gave (a template tests `message.tool_calls is defined`)."""
    if isinstance(message, ChatMessage):
        message = message.as_dict()
    if not isinstance(message, dict):
        raise ChatTemplateError(f"message {i}: a message is a mapping with a role and a content")
    role = message.get("role")
    if role not in VALID_ROLES:
        raise ChatTemplateError(f"message {i}: role must be one of {', '.join(VALID_ROLES)}, got {role!r}")
    content = message.get("content")
    tool_calls = message.get("tool_calls")
    if tool_calls is not None:
        if role != "assistant":
            raise ChatTemplateError(f"message {i}: only an assistant message carries tool_calls")
        if isinstance(tool_calls, (str, bytes, dict)) or not all(isinstance(c, dict) for c in tool_calls):
            raise ChatTemplateError(f"message {i}: tool_calls must be a list of objects")
    if not isinstance(content, str) and not (content is None and tool_calls):
        raise ChatTemplateError(f"message {i}: content must be text")
    for key in ("tool_call_id", "name"):
        if message.get(key) is not None and not isinstance(message[key], str):
            raise ChatTemplateError(f"message {i}: {key} must be text")
    plain = {"role": role, "content": content}
    plain.update({k: _plain_data(message[k], f"message {i}: {k}") for k in _MESSAGE_FIELDS if k in message})
    return plain


def _plain_data(value, where: str):
    """A deep copy made only of dict, list, str, int, float, bool and None."""
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise ChatTemplateError(f"{where}: object keys must be text")
        return {k: _plain_data(v, where) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain_data(v, where) for v in value]
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    raise ChatTemplateError(f"{where}: {type(value).__name__} is not JSON data")

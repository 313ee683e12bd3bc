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

# Used when a model file carries no template (llama.cpp falls back to ChatML too).
CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

VALID_ROLES = ("system", "user", "assistant", "tool")


class ChatTemplateError(ValueError):
    """The messages cannot be rendered: bad roles or contents, or the template refused them."""


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str


def _raise_exception(message):
    raise ChatTemplateError(str(message))


def _tojson(value, indent=None, ensure_ascii=False, sort_keys=False):
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii, sort_keys=sort_keys)


def _strftime_now(fmt):
    return datetime.datetime.now().strftime(fmt)


class ChatTemplate:
    def __init__(self, source: str | None, bos_token: str = "", eos_token: str = ""):
        self.source = source or CHATML_TEMPLATE
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                            extensions=["jinja2.ext.loopcontrols"])
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = _strftime_now
        try:
            self._template = env.from_string(self.source)
        except jinja2.TemplateError as e:
            raise ChatTemplateError(f"the model's chat template does not parse: {e}") from e
        self.bos_token = bos_token
        self.eos_token = eos_token

    def render(self, messages: Sequence[ChatMessage | dict], add_generation_prompt: bool = True) -> str:
        if not messages:
            raise ChatTemplateError("a chat needs at least one message")
        plain = []
        for i, m in enumerate(messages):
            role, content = (m.role, m.content) if isinstance(m, ChatMessage) else (m.get("role"), m.get("content"))
            if role not in VALID_ROLES:
                raise ChatTemplateError(f"message {i}: role must be one of {', '.join(VALID_ROLES)}, got {role!r}")
            if not isinstance(content, str):
                raise ChatTemplateError(f"message {i}: content must be text")
            plain.append({"role": role, "content": content})
        try:
            return self._template.render(messages=plain, add_generation_prompt=add_generation_prompt,
                                         bos_token=self.bos_token, eos_token=self.eos_token)
        except ChatTemplateError:
            raise
        except jinja2.exceptions.SecurityError as e:
            raise ChatTemplateError(f"the chat template tried something unsafe: {e}") from e
        except jinja2.TemplateError as e:
            raise ChatTemplateError(f"the chat template failed on these messages: {e}") from e

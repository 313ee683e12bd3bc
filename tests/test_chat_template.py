"""Chat templates render as Hugging Face renders them, inside a sandbox."""
import pytest

from engine.chat_template import ChatTemplate, ChatTemplateError


def test_message_content_is_data_not_template(llm):
    evil = "{{ 7*7 }} {% for x in range(3) %}x{% endfor %} {{ ''.__class__.__mro__ }}"
    prompt = llm.chat_prompt([{"role": "user", "content": evil}])
    assert evil in prompt and "49" not in prompt


def test_a_hostile_template_cannot_reach_python_internals():
    template = ChatTemplate("{{ messages.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(ChatTemplateError, match="unsafe|failed"):
        template.render([{"role": "user", "content": "hi"}])


def test_a_template_cannot_mutate_its_input():
    template = ChatTemplate("{% set _ = messages.append({'role': 'x'}) %}{{ messages | length }}")
    messages = [{"role": "user", "content": "hi"}]
    with pytest.raises(ChatTemplateError):
        template.render(messages)
    assert len(messages) == 1


def test_raise_exception_from_a_template_is_a_clear_error():
    template = ChatTemplate("{% if messages[0]['role'] != 'system' %}{{ raise_exception('system first') }}{% endif %}")
    with pytest.raises(ChatTemplateError, match="system first"):
        template.render([{"role": "user", "content": "hi"}])


@pytest.mark.parametrize("messages,message", [
    ([], "at least one message"),
    ([{"role": "wizard", "content": "hi"}], "role must be one of"),
    ([{"role": "user", "content": 5}], "content must be text"),
])
def test_bad_messages(llm, messages, message):
    with pytest.raises(ChatTemplateError, match=message):
        llm.chat_prompt(messages)


def test_chatml_fallback_when_the_model_has_no_template():
    prompt = ChatTemplate(None).render([{"role": "user", "content": "hi"}])
    assert prompt == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"

"""Chat templates render as Hugging Face renders them, inside a sandbox."""
import pytest
from model_tokenizers import QWEN_MODELS, reference, tokenizer

from engine.chat_template import ChatMessage, ChatTemplate, ChatTemplateError
from engine.llm import LLM


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


def test_a_model_without_a_template_refuses_chat():
    """No ChatML guess (llama.cpp's fallback): a base model was never trained on a chat format."""
    template = ChatTemplate(None, model_name="some-base")
    assert not template.has_template
    with pytest.raises(ChatTemplateError, match=r"this model \(some-base, a base model\) has no chat template; "
                                                r"send plain text"):
        template.render([{"role": "user", "content": "hi"}])


def test_smollm2_has_its_template(llm):
    assert llm.has_chat_template and "<|im_start|>" in llm.chat_template.source


# ---------------------------------------------------------------------------- Qwen2.5 and Gemma 3

@pytest.mark.parametrize("name", QWEN_MODELS)
def test_qwen_renderings_equal_transformers(name):
    """One user message, system + user, multi-turn, a tools list, and a tool call with its result:
    the GGUF's template as transformers' apply_chat_template renders it, and the same prompt ids
    as transformers and llama.cpp."""
    tok, ref = tokenizer(name), reference(name)
    template = ChatTemplate.of_tokenizer(tok)
    assert [case["name"] for case in ref["chat"]] == ["user", "system_user", "multi_turn", "tools",
                                                      "tool_call_round_trip"]
    for case in ref["chat"]:
        prompt = template.render(case["messages"], tools=case.get("tools"))
        assert prompt == case["prompt_text"], case["name"]
        assert tok.encode(prompt, add_bos=False) == case["prompt_ids"] == case["llamacpp_prompt_ids"], case["name"]


def test_chat_messages_as_dataclasses_render_as_dicts():
    tok, ref = tokenizer(QWEN_MODELS[0]), reference(QWEN_MODELS[0])
    case = ref["chat"][-1]
    messages = [ChatMessage(m["role"], m["content"], tool_calls=m.get("tool_calls"), name=m.get("name"))
                for m in case["messages"]]
    assert ChatTemplate.of_tokenizer(tok).render(messages, tools=case["tools"]) == case["prompt_text"]


def test_a_tool_call_without_content_renders():
    """An assistant message that only calls a tool may leave content out, as OpenAI clients send it."""
    template = ChatTemplate.of_tokenizer(tokenizer(QWEN_MODELS[0]))
    call = {"type": "function", "function": {"name": "f", "arguments": {"x": 1}}}
    prompt = template.render([{"role": "user", "content": "go"}, {"role": "assistant", "tool_calls": [call]}],
                             add_generation_prompt=False)
    assert prompt.endswith('<|im_start|>assistant\n<tool_call>\n{"name": "f", "arguments": {"x": 1}}\n'
                           '</tool_call><|im_end|>\n')


@pytest.mark.parametrize("messages,tools,message", [
    ([{"role": "user", "content": "hi", "tool_calls": [{}]}], None, "only an assistant message carries"),
    ([{"role": "assistant", "content": None}], None, "content must be text"),
    ([{"role": "assistant", "content": "", "tool_calls": "f()"}], None, "tool_calls must be a list"),
    ([{"role": "user", "content": "hi"}], {"name": "f"}, "tools must be a list"),
    ([{"role": "user", "content": "hi"}], [{"f": object()}], "not JSON data"),
])
def test_bad_tool_requests(messages, tools, message):
    template = ChatTemplate.of_tokenizer(tokenizer(QWEN_MODELS[0]))
    with pytest.raises(ChatTemplateError, match=message):
        template.render(messages, tools=tools)


def test_gemma_base_model_has_no_chat_template():
    tok = tokenizer("gemma-3-270m")
    assert reference("gemma-3-270m")["has_chat_template"] is False
    llm = LLM(model=None, tokenizer=tok)             # the chat side of LLM needs no weights
    assert not llm.has_chat_template
    with pytest.raises(ChatTemplateError, match=r"^this model \(gemma-3-270m, a base model\) has no chat "
                                                r"template; send plain text$"):
        llm.encode_chat([{"role": "user", "content": "hi"}])

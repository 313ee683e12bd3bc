"""The OpenAI gateway's pure parts: request bodies -> gRPC requests, gRPC responses -> OpenAI
bodies, gRPC status -> HTTP status and error shape. No stack, no sockets (tests/test_openai_api.py
drives the real thing)."""
import base64
import json

import grpc
import numpy as np
import pytest
from pydantic import ValidationError

from engine.tool_calls import ArgumentsDelta, ContentDelta, ToolCallStart
from services.api import common_pb2, generation_pb2, retrieval_pb2
from services.openai_api import responses as out
from services.openai_api import translate
from services.openai_api.errors import OpenAIError, from_grpc, from_validation
from services.openai_api.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    RagCompletionRequest,
)


def chat(**kw):
    return ChatCompletionRequest(model="m", messages=kw.pop("messages", [{"role": "user", "content": "hi"}]), **kw)


# ---------------------------------------------------------------------------- requests -> gRPC

def test_chat_parameters_reach_the_generate_request():
    body = chat(temperature=0.5, top_p=0.9, max_completion_tokens=7, max_tokens=99, stop="\n", seed=3,
                presence_penalty=0.5, frequency_penalty=-0.5, logprobs=True, top_logprobs=2, top_k=40, ignore_eos=True,
                messages=[{"role": "developer", "content": "be brief"},
                          {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}])
    (g,) = translate.chat_requests(body, "chatcmpl-x")
    assert g.request_id == "chatcmpl-x-0"
    assert [(m.role, m.content) for m in g.chat.messages] == [("system", "be brief"), ("user", "a\nb")]
    s = g.sampling
    assert (round(s.temperature, 6), round(s.top_p, 6), s.seed, s.top_k) == (0.5, 0.9, 3, 40)
    assert (s.presence_penalty, s.frequency_penalty) == (0.5, -0.5)
    assert g.stopping.max_new_tokens == 7                      # max_completion_tokens wins over max_tokens
    assert list(g.stopping.stop_sequences) == ["\n"] and g.stopping.ignore_eos
    assert g.response.logprobs and g.response.top_logprobs == 2


def test_unset_parameters_stay_unset_so_the_server_defaults_apply():
    (g,) = translate.chat_requests(chat(), "id")
    assert not g.sampling.HasField("temperature") and not g.sampling.HasField("top_p")
    assert not g.sampling.HasField("seed") and g.stopping.max_new_tokens == 0
    assert not g.response.logprobs


def test_n_choices_are_n_requests_with_consecutive_seeds():
    requests = translate.chat_requests(chat(n=3, seed=2**64 - 2), "id")
    assert [r.request_id for r in requests] == ["id-0", "id-1", "id-2"]
    assert [r.sampling.seed for r in requests] == [2**64 - 2, 2**64 - 1, 0]


def test_completion_prompts_in_openai_choice_order():
    body = CompletionRequest(model="m", prompt=["a", "b"], n=2, max_tokens=4, logprobs=1)
    requests = translate.completion_requests(body, "cmpl-x")
    assert [(r.text, r.request_id) for r in requests] == [("a", "cmpl-x-0"), ("a", "cmpl-x-1"), ("b", "cmpl-x-2"),
                                                          ("b", "cmpl-x-3")]
    assert all(r.stopping.max_new_tokens == 4 and r.response.top_logprobs == 1 for r in requests)
    (ids,) = translate.completion_requests(CompletionRequest(model="m", prompt=[1, 2, 3]), "c")
    assert list(ids.token_ids.ids) == [1, 2, 3]
    assert len(translate.completion_requests(CompletionRequest(model="m", prompt=[[1], [2, 3]]), "c")) == 2


@pytest.mark.parametrize("body,param", [
    (chat(functions=[{"name": "f"}]), "functions"),
    (chat(logit_bias={"5": 1.0}), "logit_bias"),
    (chat(store=True), "store"),
    (CompletionRequest(model="m", prompt="x", echo=True), "echo"),
    (CompletionRequest(model="m", prompt="x", suffix="y"), "suffix"),
    (CompletionRequest(model="m", prompt="x", best_of=3), "best_of"),
])
def test_what_the_protos_cannot_carry_is_refused_by_name(body, param):
    with pytest.raises(OpenAIError) as e:
        translate.refuse_unsupported(body, can_name_tokens=True, max_choices=16)
    assert (e.value.status, e.value.param, e.value.code) == (400, param, "unsupported_parameter")


def test_structured_output_becomes_the_requests_constraint():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    (r,) = translate.chat_requests(chat(response_format={"type": "json_schema", "json_schema": {
        "name": "x", "schema": schema, "strict": True}}), "c")
    assert json.loads(r.constraint.json_schema) == schema
    (r,) = translate.chat_requests(chat(response_format={"type": "json_object"}), "c")
    assert r.constraint.WhichOneof("kind") == "json_object" and r.constraint.json_object
    (r,) = translate.chat_requests(chat(response_format={"type": "text"}), "c")
    assert not r.HasField("constraint")
    (r,) = translate.chat_requests(chat(guided_choice=["yes", "no"]), "c")
    assert list(r.constraint.choice.choices) == ["yes", "no"]
    (r,) = translate.completion_requests(CompletionRequest(model="m", prompt="x", guided_regex="[0-9]+"), "c")
    assert r.constraint.regex == "[0-9]+"
    (r,) = translate.completion_requests(CompletionRequest(model="m", prompt="x", guided_grammar='root ::= "a"'), "c")
    assert r.constraint.gbnf_grammar == 'root ::= "a"'
    (r,) = translate.completion_requests(CompletionRequest(model="m", prompt="x", guided_grammar='start: "a"'), "c")
    assert r.constraint.lark_grammar == 'start: "a"'
    (r,) = translate.completion_requests(CompletionRequest(model="m", prompt="x", guided_json=schema), "c")
    assert json.loads(r.constraint.json_schema) == schema


@pytest.mark.parametrize("body,param", [
    (chat(response_format={"type": "xml"}), "response_format"),
    (chat(response_format={"type": "json_schema", "json_schema": "nope"}), "response_format"),
    (chat(response_format={"type": "json_object"}, guided_regex="a"), "response_format"),
    (chat(guided_choice=[]), "guided_choice"),
])
def test_bad_structured_output_is_400_naming_it(body, param):
    with pytest.raises(OpenAIError) as e:
        translate.chat_requests(body, "c")
    assert (e.value.status, e.value.param) == (400, param)


WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                          "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                         "required": ["city"]}}}


def test_tools_tool_choice_and_a_tool_round_trip_become_the_chat():
    body = chat(tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "get_weather"}}, messages=[
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "name": "get_weather", "content": "18 C, sunny"}])
    (r,) = translate.chat_requests(body, "c")
    (tool,) = r.chat.tools
    assert (tool.name, tool.description) == ("get_weather", "Weather of a city")
    assert json.loads(tool.parameters) == WEATHER["function"]["parameters"]
    assert (r.chat.tool_choice.mode, r.chat.tool_choice.function_name) == (generation_pb2.TOOL_CHOICE_FUNCTION,
                                                                            "get_weather")
    assistant, result = r.chat.messages[1], r.chat.messages[2]
    assert [(c.id, c.name, json.loads(c.arguments)) for c in assistant.tool_calls] == [
        ("call_1", "get_weather", {"city": "Paris"})]
    assert (result.role, result.tool_call_id, result.name, result.content) == ("tool", "call_1", "get_weather",
                                                                               "18 C, sunny")
    for choice, mode in (("auto", generation_pb2.TOOL_CHOICE_AUTO), ("none", generation_pb2.TOOL_CHOICE_NONE),
                         ("required", generation_pb2.TOOL_CHOICE_REQUIRED)):
        assert translate.chat_requests(chat(tools=[WEATHER], tool_choice=choice), "c")[0].chat.tool_choice.mode == mode


@pytest.mark.parametrize("body,param", [
    (chat(tools=[{"type": "code_interpreter"}]), "tools[0]"),
    (chat(tools=[{"type": "function", "function": {}}]), "tools[0].function.name"),
    (chat(tools=[WEATHER], tool_choice="always"), "tool_choice"),
    (chat(messages=[{"role": "user", "content": "x", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}]), "messages[0].tool_calls"),
    (chat(messages=[{"role": "assistant", "content": None, "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}]), "messages[0].tool_calls"),
])
def test_bad_tools_are_400(body, param):
    with pytest.raises(OpenAIError) as e:
        translate.chat_requests(body, "c")
    assert (e.value.status, e.value.param) == (400, param)


def test_tool_calls_in_responses_and_stream_deltas():
    call = common_pb2.ToolCall(id="call_9", name="get_weather", arguments='{"city": "Paris"}')
    body = out.chat_completion(out.Envelope("x", 1, "m"), [out.Choice(0, "", "tool_calls", None, [call])], out.Usage())
    message = body["choices"][0]["message"]
    assert message["content"] is None and body["choices"][0]["finish_reason"] == "tool_calls"
    assert message["tool_calls"] == [{"id": "call_9", "type": "function",
                                      "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]
    assert out.finish_reason(common_pb2.FINISH_REASON_TOOL_CALLS) == "tool_calls"
    deltas = out.tool_call_deltas([ContentDelta("ok"), ToolCallStart(0, "call_9", "get_weather"),
                                   ArgumentsDelta(0, '{"city": ')])
    assert deltas == [{"content": "ok"},
                      {"tool_calls": [{"index": 0, "id": "call_9", "type": "function",
                                       "function": {"name": "get_weather", "arguments": ""}}]},
                      {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}]


def test_values_that_ask_for_nothing_are_accepted():
    translate.refuse_unsupported(chat(tool_choice="none", response_format={"type": "text"}, store=False,
                                      modalities=["text"], logit_bias={}), can_name_tokens=True, max_choices=16)


def test_logprobs_need_the_tokenizer_and_top_logprobs_needs_logprobs():
    with pytest.raises(OpenAIError) as e:
        translate.refuse_unsupported(chat(logprobs=True), can_name_tokens=False, max_choices=16)
    assert e.value.param == "logprobs" and "MESHLLM_TOKENIZER_ADDRESS" in e.value.message
    with pytest.raises(OpenAIError) as e:
        translate.refuse_unsupported(chat(top_logprobs=2), can_name_tokens=True, max_choices=16)
    assert e.value.param == "top_logprobs"
    with pytest.raises(OpenAIError) as e:
        translate.refuse_unsupported(CompletionRequest(model="m", prompt=["a", "b", "c"], n=3), True, max_choices=8)
    assert e.value.param == "n" and "9 choices" in e.value.message


def test_message_fields_without_a_proto_field_are_refused():
    with pytest.raises(OpenAIError) as e:
        translate.chat_messages(chat(messages=[{"role": "user", "content": "x", "function_call": {"name": "f"}}]))
    assert e.value.param == "messages[0].function_call"
    with pytest.raises(OpenAIError) as e:
        translate.chat_messages(chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]))
    assert e.value.param == "messages[0].content[0]"


def test_stop_sequences():
    assert translate.stop_sequences(None) == [] and translate.stop_sequences("x") == ["x"]
    assert translate.stop_sequences(["a", "b"]) == ["a", "b"]


def test_model_names_are_checked_case_insensitively():
    translate.check_model(None, ["m"])                             # the RAG route's model is optional
    translate.check_model("SmolLM2-135M-Instruct", ["smollm2-135m-instruct", "Smollm2 135M"])
    with pytest.raises(OpenAIError) as e:
        translate.check_model("gpt-4o", ["smollm2-135m-instruct"])
    assert (e.value.status, e.value.code, e.value.param) == (404, "model_not_found", "model")


def test_rag_request_keeps_asks_greedy_default():
    ask = translate.ask_request(RagCompletionRequest(query="q", top_k=3, mode="dense", seed=4, max_tokens=9,
                                                     sources=["notes"], min_relevance=0.1))
    assert (ask.question, ask.top_k, ask.mode, ask.max_new_tokens) == ("q", 3, retrieval_pb2.SEARCH_MODE_DENSE, 9)
    assert list(ask.sources) == ["notes"] and round(ask.min_relevance, 6) == 0.1
    assert ask.sampling.temperature == 0.0 and ask.sampling.seed == 4
    assert not translate.ask_request(RagCompletionRequest(query="q")).HasField("sampling")


def test_embedding_inputs():
    assert translate.embed_texts(EmbeddingRequest(model="e", input="a"), 384) == ["a"]
    with pytest.raises(OpenAIError) as e:
        translate.embed_texts(EmbeddingRequest(model="e", input=[1, 2]), 384)
    assert e.value.param == "input"
    with pytest.raises(OpenAIError) as e:
        translate.embed_texts(EmbeddingRequest(model="e", input="a", dimensions=64), 384)
    assert e.value.param == "dimensions"


# ---------------------------------------------------------------------------- validation errors

def validation_error(cls, **body):
    with pytest.raises(ValidationError) as e:
        cls(**body)
    return from_validation(e.value.errors())


def test_validation_errors_are_400_with_the_parameter_named():
    e = validation_error(ChatCompletionRequest, model="m", messages=[])
    assert (e.status, e.param, e.type) == (400, "messages", "invalid_request_error")
    e = validation_error(ChatCompletionRequest, model="m", messages=[{"role": "user", "content": "x"}], temperature=3)
    assert e.param == "temperature" and "less than or equal to 2" in e.message
    e = validation_error(ChatCompletionRequest, model="m", messages=[{"role": "wizard", "content": "x"}])
    assert e.param == "messages[0].role"
    e = validation_error(ChatCompletionRequest, model="m", messages=[{"role": "user", "content": "x"}], bogus=1)
    assert (e.param, e.code) == ("bogus", "unknown_parameter") and "Unrecognized request argument" in e.message
    e = validation_error(ChatCompletionRequest, messages=[{"role": "user", "content": "x"}])
    assert (e.param, e.code) == ("model", "missing_required_parameter")
    e = validation_error(CompletionRequest, model="m", prompt=5)
    assert e.param == "prompt" and e.message.startswith("prompt: prompt must be a string")
    assert from_validation([]).status == 400


# ---------------------------------------------------------------------------- gRPC status -> HTTP

@pytest.mark.parametrize("code,status,error_type", [
    (grpc.StatusCode.INVALID_ARGUMENT, 400, "invalid_request_error"),
    (grpc.StatusCode.OUT_OF_RANGE, 400, "invalid_request_error"),
    (grpc.StatusCode.FAILED_PRECONDITION, 400, "invalid_request_error"),
    (grpc.StatusCode.UNAUTHENTICATED, 401, "invalid_request_error"),
    (grpc.StatusCode.PERMISSION_DENIED, 403, "permission_error"),
    (grpc.StatusCode.NOT_FOUND, 404, "invalid_request_error"),
    (grpc.StatusCode.ALREADY_EXISTS, 409, "invalid_request_error"),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, 429, "rate_limit_error"),
    (grpc.StatusCode.UNAVAILABLE, 503, "server_error"),
    (grpc.StatusCode.DEADLINE_EXCEEDED, 504, "server_error"),
    (grpc.StatusCode.INTERNAL, 500, "server_error"),
    (grpc.StatusCode.UNKNOWN, 500, "server_error"),
])
def test_grpc_codes_map_to_http_statuses(code, status, error_type):
    e = from_grpc(code, "details", "Generation")
    assert (e.status, e.type) == (status, error_type)
    assert set(e.body()["error"]) == {"message", "type", "param", "code"}


def test_the_generation_services_context_overflow_is_context_length_exceeded():
    for details in ("the prompt has 9000 tokens; the model's context holds 8192",
                    "the prompt (8000 tokens) plus max_new_tokens (500) exceed the model's context (8192)"):
        e = from_grpc(grpc.StatusCode.INVALID_ARGUMENT, details, "Generation")
        assert (e.status, e.code, e.message) == (400, "context_length_exceeded", details)
    assert from_grpc(grpc.StatusCode.INVALID_ARGUMENT, "temperature must be >= 0", "Generation").code == "invalid_value"


def test_message_size_and_queue_full_are_told_apart():
    too_big = from_grpc(grpc.StatusCode.RESOURCE_EXHAUSTED, "Sent message larger than max (9437220 vs. 8388608)", "G")
    assert (too_big.status, too_big.code) == (413, "request_too_large")
    full = from_grpc(grpc.StatusCode.RESOURCE_EXHAUSTED, "the job queue is full (256 jobs)", "G")
    assert (full.status, full.code) == (429, "rate_limit_exceeded")
    down = from_grpc(grpc.StatusCode.UNAVAILABLE, "failed to connect", "Retrieval")
    assert down.message == "the Retrieval service is unavailable: failed to connect"


# ---------------------------------------------------------------------------- gRPC -> OpenAI bodies

def test_finish_reasons():
    assert out.finish_reason(common_pb2.FINISH_REASON_UNSPECIFIED) is None
    for value in (common_pb2.FINISH_REASON_EOS, common_pb2.FINISH_REASON_STOP_SEQUENCE,
                  common_pb2.FINISH_REASON_STOP_TOKEN):
        assert out.finish_reason(value) == "stop"
    for value in (common_pb2.FINISH_REASON_LENGTH, common_pb2.FINISH_REASON_TIME_LIMIT,
                  common_pb2.FINISH_REASON_CANCELLED):
        assert out.finish_reason(value) == "length"


def test_usage_counts_a_prompt_once_for_its_n_choices():
    usage = out.Usage()
    for i in range(3):
        usage.add(common_pb2.Usage(prompt_tokens=10, completion_tokens=4, cached_prompt_tokens=8 if i else 0),
                  count_prompt=i == 0)
    assert usage.body() == {"prompt_tokens": 10, "completion_tokens": 12, "total_tokens": 22,
                            "prompt_tokens_details": {"cached_tokens": 0}}


def tokens():
    return [generation_pb2.TokenInfo(token_id=1, logprob=-0.5, top_logprobs=[generation_pb2.TopLogprob(
                token_id=1, logprob=-0.5), generation_pb2.TopLogprob(token_id=2, logprob=-1.5)]),
            generation_pb2.TokenInfo(token_id=3, logprob=-0.25)]


def test_chat_logprobs_shape():
    lp = out.chat_logprobs(tokens(), {1: "Hé", 2: "Ho", 3: "!"})
    first = lp["content"][0]
    assert first == {"token": "Hé", "logprob": -0.5, "bytes": [72, 195, 169],
                     "top_logprobs": [{"token": "Hé", "logprob": -0.5, "bytes": [72, 195, 169]},
                                      {"token": "Ho", "logprob": -1.5, "bytes": [72, 111]}]}
    assert lp["content"][1]["top_logprobs"] == [] and lp["refusal"] is None


def test_completion_logprobs_continue_their_text_offset():
    lp, offset = out.completion_logprobs(tokens(), {1: "Hé", 2: "Ho", 3: "!"}, 5)
    assert lp == {"tokens": ["Hé", "!"], "token_logprobs": [-0.5, -0.25],
                  "top_logprobs": [{"Hé": -0.5, "Ho": -1.5}, {}], "text_offset": [5, 7]}
    assert offset == 8
    assert out.token_ids_to_name([generation_pb2.GenerateResponse(tokens=tokens())]) == {1, 2, 3}


def test_chunks_and_bodies():
    env = out.Envelope("chatcmpl-1", 100, "m", "fp_x")
    chunk = out.chat_chunk(env, 1, {"content": "a"}, with_usage=True)
    assert chunk == {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 100, "model": "m",
                     "system_fingerprint": "fp_x", "usage": None,
                     "choices": [{"index": 1, "delta": {"content": "a"}, "logprobs": None, "finish_reason": None}]}
    assert "usage" not in out.chat_chunk(env, 0, {})
    last = out.usage_chunk(env, "chat.completion.chunk", out.Usage(3, 2, 1))
    assert last["choices"] == [] and last["usage"]["total_tokens"] == 5
    body = out.chat_completion(env, [out.Choice(0, "hi", "stop")], out.Usage(3, 1))
    assert body["object"] == "chat.completion" and body["choices"][0]["message"] == {
        "role": "assistant", "content": "hi", "refusal": None}


def test_embeddings_as_floats_and_base64():
    vectors = [[0.5, -1.0, 2.0]]
    assert out.embeddings(vectors, "e", "float")["data"][0]["embedding"] == [0.5, -1.0, 2.0]
    encoded = out.embeddings(vectors, "e", "base64")["data"][0]["embedding"]
    assert np.frombuffer(base64.b64decode(encoded), dtype="<f4").tolist() == [0.5, -1.0, 2.0]

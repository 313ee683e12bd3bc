"""Tool calls end to end on Qwen2.5 (whose chat template has tools): Generation, a worker and the
OpenAI gateway as real processes, driven over gRPC and with the openai package. Skipped when the
model is not installed."""
from __future__ import annotations

import json
import uuid

import jsonschema
import pytest

from engine.model_registry import installed_path
from harness.mesh import Mesh, channel
from services.api import common_pb2, generation_pb2, generation_pb2_grpc

openai = pytest.importorskip("openai")

MODEL = "qwen2.5-coder-0.5b-instruct"
WEATHER_PARAMETERS = {"type": "object", "properties": {
    "city": {"type": "string", "description": "the city's name"},
    "unit": {"enum": ["celsius", "fahrenheit"]}}, "required": ["city", "unit"], "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "The current weather of a city",
                                           "parameters": WEATHER_PARAMETERS}},
         {"type": "function", "function": {"name": "get_time", "description": "The local time of a city",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                          "required": ["city"]}}}]
ASK = [{"role": "user", "content": "What is the weather in Paris right now, in celsius?"}]

pytestmark = pytest.mark.skipif(installed_path(MODEL) is None, reason=f"{MODEL} is not installed")


@pytest.fixture(scope="module")
def stack(redis_server):
    m = Mesh(redis_server.url, f"tc{uuid.uuid4().hex[:8]}:", env_extra={"MESHLLM_MODEL": MODEL})
    try:
        procs = {"generation": m.service("generation", wait=False)}
        m.worker(wait=False)
        m.wait_serving(procs["generation"], timeout=600)
        m.gateway_proc = m.gateway(procs, wait=False)
        m.wait_serving(m.gateway_proc, timeout=600)
        m.generation = procs["generation"]
        yield m
    finally:
        m.stop()


@pytest.fixture(scope="module")
def gen(stack):
    with channel(stack.generation) as ch:
        yield generation_pb2_grpc.GenerationStub(ch)


@pytest.fixture(scope="module")
def client(stack):
    return openai.OpenAI(base_url=f"{stack.gateway_proc.url}/v1", api_key="none", max_retries=0, timeout=300)


def pb_tools():
    return [generation_pb2.Tool(name=t["function"]["name"], description=t["function"]["description"],
                                parameters=json.dumps(t["function"]["parameters"])) for t in TOOLS]


def test_a_required_call_over_grpc_is_one_valid_call(gen):
    """tool_choice required: the answer is one call to one of the tools, its arguments valid
    against that tool's schema, parsed into tool_calls with FINISH_REASON_TOOL_CALLS."""
    chat = generation_pb2.Chat(messages=[common_pb2.ChatMessage(role="user", content=ASK[0]["content"])],
                               tools=pb_tools(),
                               tool_choice=generation_pb2.ToolChoice(mode=generation_pb2.TOOL_CHOICE_REQUIRED))
    reply = gen.Generate(generation_pb2.GenerateRequest(chat=chat, sampling=generation_pb2.SamplingParams(
        temperature=0.8, seed=1), stopping=generation_pb2.StoppingCriteria(max_new_tokens=80)), timeout=300)
    (call,) = reply.tool_calls
    assert reply.finish_reason == common_pb2.FINISH_REASON_TOOL_CALLS and reply.text == ""
    schema = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}[call.name]
    jsonschema.validate(json.loads(call.arguments), schema)
    assert call.id.startswith("call_")


def test_a_named_function_is_the_one_called(client):
    reply = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, max_tokens=80, temperature=0,
                                           tool_choice={"type": "function", "function": {"name": "get_time"}})
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_time" and "paris" in json.loads(call.function.arguments)["city"].lower()


def test_auto_calls_the_tool_then_answers_from_its_result(client):
    """The round trip: the model calls get_weather on its own (Qwen2.5-Coder-0.5B writes the call's
    JSON without the <tool_call> tags: read as a call too), the tool's result goes back as a role
    "tool" message, and the model answers from it. The second turn sets tool_choice "none": this
    small model, still shown the tools, calls them again instead of answering."""
    first = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, max_tokens=80, temperature=0)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls", choice.message
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather"
    arguments = json.loads(call.function.arguments)
    assert arguments["city"].lower().startswith("paris")
    messages = ASK + [
        choice.message.model_dump(exclude_none=True),        # the assistant's message as the client got it
        {"role": "tool", "tool_call_id": call.id, "name": "get_weather",
         "content": json.dumps({"temperature": 17, "unit": "celsius", "sky": "light rain"})}]
    second = client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS, tool_choice="none",
                                            max_tokens=60, temperature=0)
    answer = second.choices[0]
    assert answer.finish_reason == "stop" and not answer.message.tool_calls, answer.message
    assert "17" in answer.message.content


def streamed(client, **kwargs):
    """(call starts, joined arguments, joined content, finish_reason) of a streamed chat."""
    stream = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, max_tokens=80, temperature=0,
                                            stream=True, **kwargs)
    starts, arguments, content, finish = [], [], [], None
    for chunk in stream:
        delta = chunk.choices[0].delta
        content.append(delta.content or "")
        for t in delta.tool_calls or []:
            if t.id:
                starts.append((t.index, t.id, t.function.name))
            if t.function and t.function.arguments:
                arguments.append(t.function.arguments)
        finish = chunk.choices[0].finish_reason or finish
    return starts, "".join(arguments), "".join(content), finish


@pytest.mark.parametrize("tool_choice", ["required", "auto"])
def test_a_streamed_call_arrives_as_tool_call_deltas(client, tool_choice):
    """Streamed: a first delta with the call's id and name, then the arguments in pieces that
    join to the same JSON as the unary answer's; no call markup or JSON in any content delta
    (required: a tagged call, parsed as it streams; auto: this model's bare JSON, held back until
    the answer ends)."""
    starts, arguments, content, finish = streamed(client, tool_choice=tool_choice)
    assert len(starts) == 1 and starts[0][0] == 0 and finish == "tool_calls"
    assert "tool_call" not in content and "{" not in content
    unary = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, max_tokens=80, temperature=0,
                                           tool_choice=tool_choice)
    (call,) = unary.choices[0].message.tool_calls
    assert starts[0][2] == call.function.name and json.loads(arguments) == json.loads(call.function.arguments)


def test_tool_choice_none_answers_in_text(client):
    reply = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, tool_choice="none", max_tokens=24,
                                           temperature=0)
    assert not reply.choices[0].message.tool_calls and reply.choices[0].message.content


def test_bad_tools_are_400(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, max_tokens=8,
                                       tool_choice={"type": "function", "function": {"name": "get_stock_price"}})
    assert "get_stock_price" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=8, tool_choice="required")
    assert "no tools" in e.value.message


def test_langchain_tool_round_trip(stack):
    """LangChain's ChatOpenAI with bind_tools: a named call comes back as an AIMessage's
    tool_calls (arguments parsed), and a ToolMessage with the result gets an answer in text."""
    chat_models = pytest.importorskip("langchain_openai")
    messages_module = pytest.importorskip("langchain_core.messages")
    llm = chat_models.ChatOpenAI(model=MODEL, base_url=f"{stack.gateway_proc.url}/v1", api_key="none",
                                 temperature=0, max_tokens=80, max_retries=0, timeout=300)
    question = messages_module.HumanMessage(ASK[0]["content"])
    called = llm.bind_tools(TOOLS, tool_choice="get_weather").invoke([question])
    (call,) = called.tool_calls
    assert call["name"] == "get_weather" and call["args"]["city"].lower().startswith("paris")
    jsonschema.validate(call["args"], WEATHER_PARAMETERS)
    result = messages_module.ToolMessage(json.dumps({"temperature": 17, "unit": "celsius"}), tool_call_id=call["id"])
    answer = llm.bind_tools(TOOLS, tool_choice="none").invoke([question, called, result])
    assert not answer.tool_calls and answer.content and answer.response_metadata["finish_reason"] == "stop"

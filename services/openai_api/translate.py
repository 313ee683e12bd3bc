"""OpenAI request bodies -> meshllm gRPC requests. Pure functions: no I/O, no event loop.

A parameter the protos have no field for is refused with a 400 naming it (errors.unsupported),
never dropped: a client that asks for JSON mode or tools must not get a plain answer that looks
like one. `n` choices are n GenerateRequests (the protos have no multi-sequence request); with a
seed, choice i uses seed + i so the choices differ and each is reproducible.
"""
from __future__ import annotations

import json

from ..api import common_pb2, generation_pb2, retrieval_pb2
from .errors import invalid, model_not_found, unsupported
from .schemas import MAX_SEED, ChatCompletionRequest, CompletionRequest, EmbeddingRequest, RagCompletionRequest

# Roles of OpenAI's chat -> the chat template's (OpenAI treats developer messages as system ones)
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool"}

_SEARCH_MODES = {"hybrid": retrieval_pb2.SEARCH_MODE_HYBRID, "lexical": retrieval_pb2.SEARCH_MODE_LEXICAL,
                 "dense": retrieval_pb2.SEARCH_MODE_DENSE}

# parameter -> (values that ask for nothing, why the mesh cannot do it)
_CHAT_UNSUPPORTED = {
    "functions": ((), "the legacy functions API is not served: send tools"),
    "function_call": (("none",), "the legacy functions API is not served: send tool_choice"),
    "audio": ((), "the mesh generates text only"),
    "modalities": ((["text"],), "the mesh generates text only"),
    "prediction": ((), "GenerateRequest has no predicted output (prompt-lookup speculation is automatic "
                       "for RAG)"),
    "web_search_options": ((), "the mesh has no web search"),
    "reasoning_effort": ((), "the served models have no reasoning mode"),
    "verbosity": ((), "the served models have no verbosity control"),
    "store": ((False,), "the mesh does not store completions"),
}


def check_model(requested: str | None, served: list[str]) -> None:
    """404 unless requested is one of the mesh's names for its model (case-insensitive)."""
    if requested is None:
        return
    if requested.lower() not in {name.lower() for name in served if name}:
        raise model_not_found(requested, [n for n in served if n][:1])


def refuse_unsupported(request: ChatCompletionRequest | CompletionRequest, can_name_tokens: bool,
                       max_choices: int) -> None:
    if request.logit_bias:
        raise unsupported("logit_bias", "SamplingParams has no logit bias")
    if isinstance(request, ChatCompletionRequest):
        for param, (harmless, why) in _CHAT_UNSUPPORTED.items():
            value = getattr(request, param)
            if value is not None and value not in harmless:
                raise unsupported(param, why)
        if request.top_logprobs is not None and not request.logprobs:
            raise invalid("top_logprobs needs logprobs set to true", param="top_logprobs")
        wants_logprobs = bool(request.logprobs)
        calls = request.n
    else:
        if request.echo:
            raise unsupported("echo", "GenerateResponse carries no prompt tokens or prompt logprobs")
        if request.suffix:
            raise unsupported("suffix", "GenerateRequest has no fill-in-the-middle input")
        if request.best_of is not None and request.best_of != request.n:
            raise unsupported("best_of", "choose the best of several by asking for n choices")
        wants_logprobs = request.logprobs is not None
        calls = request.n * len(prompts_of(request))
    if wants_logprobs and not can_name_tokens:
        raise unsupported("logprobs", "this gateway has no Tokenizer service to name the tokens "
                                      "(set MESHLLM_TOKENIZER_ADDRESS)")
    if calls > max_choices:
        raise invalid(f"{calls} choices asked (n times the prompts); the limit is {max_choices}", param="n")


def constraint_pb(request) -> generation_pb2.OutputConstraint | None:
    """The structured-output constraint of a chat (response_format, or vLLM's guided_*) or a
    completion (guided_*); None when none is asked for. At most one may be given."""
    asked = {name: getattr(request, name) for name in ("guided_json", "guided_regex", "guided_choice", "guided_grammar")
             if getattr(request, name, None) is not None}
    response_format = getattr(request, "response_format", None)
    if response_format is not None and response_format != {"type": "text"}:
        asked["response_format"] = response_format
    if len(asked) > 1:
        raise invalid(f"ask for one structured output at a time, not {' and '.join(sorted(asked))}",
                      param=sorted(asked)[1])
    if not asked:
        return None
    (param, value), = asked.items()
    c = generation_pb2.OutputConstraint()
    if param == "response_format":
        kind = value.get("type") if isinstance(value, dict) else None
        if kind == "json_object":
            c.json_object = True
        elif kind == "json_schema":
            spec = value.get("json_schema")
            if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
                raise invalid("response_format.json_schema must be an object with a 'schema' object",
                              param="response_format")
            # strict or not, the output is held to the schema: the constraint is the whole guarantee
            c.json_schema = json.dumps(spec.get("schema", {}))
        else:
            raise invalid("response_format.type must be 'text', 'json_object' or 'json_schema'",
                          param="response_format")
    elif param == "guided_json":
        c.json_schema = value if isinstance(value, str) else json.dumps(value)
    elif param == "guided_regex":
        c.regex = value
    elif param == "guided_choice":
        if not value:
            raise invalid("guided_choice must list at least one string", param=param)
        c.choice.choices.extend(value)
    elif "::=" in value:                       # guided_grammar: GBNF (llama.cpp) or Lark
        c.gbnf_grammar = value
    else:
        c.lark_grammar = value
    return c


def chat_messages(request: ChatCompletionRequest) -> list[common_pb2.ChatMessage]:
    out = []
    for i, m in enumerate(request.messages):
        where = f"messages[{i}]"
        if m.function_call is not None:
            raise unsupported(f"{where}.function_call", "the legacy functions API is not served: send tool_calls")
        calls = _message_tool_calls(m.tool_calls, where) if m.role == "assistant" and m.tool_calls else []
        if m.tool_calls and m.role != "assistant":
            raise invalid(f"{where}.tool_calls: only an assistant message has tool calls", param=f"{where}.tool_calls")
        if m.content is None and not calls:
            raise invalid(f"{where}.content is required", param=f"{where}.content")
        if m.content is None:
            text = ""
        elif isinstance(m.content, str):
            text = m.content
        else:
            parts = []
            for j, part in enumerate(m.content):
                if part.type != "text" or part.text is None:
                    raise unsupported(f"{where}.content[{j}]", f"the served models read text, not {part.type!r}")
                parts.append(part.text)
            text = "\n".join(parts)
        out.append(common_pb2.ChatMessage(role=_ROLES[m.role], content=text, name=m.name or "",
                                          tool_call_id=m.tool_call_id or "", tool_calls=calls))
    return out


def _message_tool_calls(value, where: str) -> list[common_pb2.ToolCall]:
    """An assistant message's tool_calls (OpenAI's: id, type "function", function name and
    arguments as JSON text)."""
    param = f"{where}.tool_calls"
    if not isinstance(value, list):
        raise invalid(f"{param} must be a list", param=param)
    calls = []
    for j, call in enumerate(value):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise invalid(f'{param}[{j}] must be {{"id", "type": "function", "function": {{"name", "arguments"}}}}',
                          param=param)
        arguments = function.get("arguments", "{}")
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments)
        try:
            json.loads(arguments or "{}")
        except json.JSONDecodeError:
            raise invalid(f"{param}[{j}].function.arguments is not valid JSON", param=param) from None
        calls.append(common_pb2.ToolCall(id=str(call.get("id") or ""), name=function["name"], arguments=arguments))
    return calls


def tools_pb(request: ChatCompletionRequest) -> tuple[list[generation_pb2.Tool], generation_pb2.ToolChoice]:
    """OpenAI's tools and tool_choice as the Chat's (the Generation service checks the schemas)."""
    tools = []
    if request.tools is not None:
        if not isinstance(request.tools, list):
            raise invalid("tools must be a list of function tools", param="tools")
        for i, tool in enumerate(request.tools):
            if not isinstance(tool, dict) or tool.get("type") != "function":
                raise unsupported(f"tools[{i}]", "only function tools are served")
            function = tool.get("function")
            if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
                raise invalid(f"tools[{i}].function.name is required", param=f"tools[{i}].function.name")
            parameters = function.get("parameters")
            if parameters is not None and not isinstance(parameters, dict):
                raise invalid(f"tools[{i}].function.parameters must be a JSON schema object",
                              param=f"tools[{i}].function.parameters")
            tools.append(generation_pb2.Tool(name=function["name"], description=str(function.get("description") or ""),
                                             parameters=json.dumps(parameters) if parameters is not None else ""))
    choice = request.tool_choice
    modes = {"auto": generation_pb2.TOOL_CHOICE_AUTO, "none": generation_pb2.TOOL_CHOICE_NONE,
             "required": generation_pb2.TOOL_CHOICE_REQUIRED}
    if choice is None:
        return tools, generation_pb2.ToolChoice()
    if isinstance(choice, str) and choice in modes:
        return tools, generation_pb2.ToolChoice(mode=modes[choice])
    function = choice.get("function") if isinstance(choice, dict) else None
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(function, dict) \
            and isinstance(function.get("name"), str):
        return tools, generation_pb2.ToolChoice(mode=generation_pb2.TOOL_CHOICE_FUNCTION,
                                                function_name=function["name"])
    raise invalid('tool_choice must be "auto", "none", "required" or {"type": "function", "function": {"name": ...}}',
                  param="tool_choice")


def prompts_of(request: CompletionRequest) -> list[str | list[int]]:
    """A completion's prompts: one string, several, one token-id list, or several."""
    p = request.prompt
    if isinstance(p, str):
        return [p]
    if all(isinstance(t, int) for t in p):
        return [list(p)]
    return list(p)


def sampling_pb(request, choice: int = 0) -> generation_pb2.SamplingParams:
    s = generation_pb2.SamplingParams()
    if request.temperature is not None:
        s.temperature = request.temperature
    if request.top_p is not None:
        s.top_p = request.top_p
    if request.seed is not None:
        s.seed = (request.seed + choice) % (MAX_SEED + 1)
    s.presence_penalty = request.presence_penalty or 0.0
    s.frequency_penalty = request.frequency_penalty or 0.0
    for extension in ("top_k", "min_p", "repetition_penalty"):
        value = getattr(request, extension, None)
        if value is not None:
            setattr(s, extension, value)
    return s


def stop_sequences(stop: str | list[str] | None) -> list[str]:
    if stop is None:
        return []
    return [stop] if isinstance(stop, str) else list(stop)


def _stopping(request, max_new_tokens: int | None) -> generation_pb2.StoppingCriteria:
    return generation_pb2.StoppingCriteria(max_new_tokens=max_new_tokens or 0,     # 0: the server's default
                                           stop_sequences=stop_sequences(request.stop),
                                           ignore_eos=request.ignore_eos)


def chat_requests(request: ChatCompletionRequest, request_id: str) -> list[generation_pb2.GenerateRequest]:
    """One GenerateRequest per choice, request ids `{request_id}-{choice}`."""
    tools, tool_choice = tools_pb(request)
    chat = generation_pb2.Chat(messages=chat_messages(request), tools=tools, tool_choice=tool_choice)
    max_new = request.max_completion_tokens or request.max_tokens
    response = generation_pb2.ResponseOptions(logprobs=bool(request.logprobs), top_logprobs=request.top_logprobs or 0)
    constraint = constraint_pb(request)
    return [generation_pb2.GenerateRequest(request_id=f"{request_id}-{i}", chat=chat,
                                           sampling=sampling_pb(request, i), stopping=_stopping(request, max_new),
                                           response=response, constraint=constraint)
            for i in range(request.n)]


def completion_requests(request: CompletionRequest, request_id: str) -> list[generation_pb2.GenerateRequest]:
    """Choices in OpenAI's order: every prompt's n choices, prompt after prompt."""
    response = generation_pb2.ResponseOptions(logprobs=request.logprobs is not None,
                                              top_logprobs=request.logprobs or 0)
    constraint = constraint_pb(request)
    out = []
    for p, prompt in enumerate(prompts_of(request)):
        for i in range(request.n):
            g = generation_pb2.GenerateRequest(request_id=f"{request_id}-{p * request.n + i}",
                                               sampling=sampling_pb(request, i),
                                               stopping=_stopping(request, request.max_tokens), response=response,
                                               constraint=constraint)
            if isinstance(prompt, str):
                g.text = prompt
            else:
                g.token_ids.ids.extend(prompt)
            out.append(g)
    return out


def ask_request(request: RagCompletionRequest) -> retrieval_pb2.AskRequest:
    ask = retrieval_pb2.AskRequest(question=request.query, top_k=request.top_k or 0, mode=_SEARCH_MODES[request.mode],
                                   sources=request.sources, max_new_tokens=request.max_tokens or 0)
    if request.min_relevance is not None:
        ask.min_relevance = request.min_relevance
    sampling_fields = ("temperature", "top_p", "seed", "presence_penalty", "frequency_penalty")
    if any(getattr(request, f) is not None for f in sampling_fields):
        sampling = sampling_pb(request)
        if request.temperature is None:          # keep Ask's greedy default when only other fields are set
            sampling.temperature = 0.0
        ask.sampling.CopyFrom(sampling)
    return ask


def embed_texts(request: EmbeddingRequest, dimensions: int) -> list[str]:
    if request.dimensions is not None and request.dimensions != dimensions:
        raise unsupported("dimensions", f"the embedding model's vectors have {dimensions} dimensions")
    texts = [request.input] if isinstance(request.input, str) else request.input
    if not all(isinstance(t, str) for t in texts):
        raise unsupported("input", "Retrieval.Embed takes text, not token ids")
    return list(texts)

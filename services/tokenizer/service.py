"""The Tokenizer service: the model's vocabulary and chat template over gRPC (port 50051).

It loads the model file's metadata and tokenizer only (the weights stay mapped, never computed
with) and does not use Redis: it is ready as soon as its tokenizer is.
"""
from __future__ import annotations

import json

from engine.chat_template import ChatMessage
from engine.llm import LLM

from ..api import tokenizer_pb2 as pb
from ..api import tokenizer_pb2_grpc
from ..common.config import GenerationLimits
from ..common.errors import InvalidRequest, unary

SERVICE = "meshllm.v1.Tokenizer"


def chat_from_pb(messages) -> list[ChatMessage]:
    """Chat messages for the template, with an assistant's earlier calls (arguments as objects,
    as templates render them) and a tool result's call id and name."""
    out = []
    for i, m in enumerate(messages):
        calls = None
        if m.tool_calls:
            calls = []
            for j, call in enumerate(m.tool_calls):
                try:
                    arguments = json.loads(call.arguments or "{}")
                except json.JSONDecodeError as e:
                    raise InvalidRequest(f"messages[{i}].tool_calls[{j}].arguments is not valid JSON: {e}") from e
                calls.append({"id": call.id, "type": "function",
                              "function": {"name": call.name, "arguments": arguments}})
        out.append(ChatMessage(m.role, m.content, tool_calls=calls, tool_call_id=m.tool_call_id or None,
                               name=m.name or None))
    return out


class TokenizerServicer(tokenizer_pb2_grpc.TokenizerServicer):
    def __init__(self, llm: LLM, limits: GenerationLimits):
        self.llm = llm
        self.tokenizer = llm.tokenizer
        self.limits = limits

    def _text(self, text: str) -> str:
        if len(text) > self.limits.max_input_chars:
            raise InvalidRequest(f"text has {len(text)} characters; the limit is {self.limits.max_input_chars}")
        return text

    def _add_bos(self, add_special_tokens: bool) -> bool | None:
        return None if add_special_tokens else False

    @unary(SERVICE)
    async def Tokenize(self, request, context):
        ids, offsets = self.tokenizer.encode_with_offsets(self._text(request.text),
                                                          add_bos=self._add_bos(request.add_special_tokens))
        return pb.TokenizeResponse(token_ids=ids, tokens=[self.tokenizer.pieces[i] for i in ids],
                                   offsets=[pb.Offset(start=a, end=b) for a, b in offsets])

    @unary(SERVICE)
    async def Detokenize(self, request, context):
        bad = [t for t in request.token_ids if not self.tokenizer.is_valid_id(t)]
        if bad:
            raise InvalidRequest(f"token ids out of range [0, {self.tokenizer.vocab_size}): {bad[:5]}")
        return pb.DetokenizeResponse(text=self.tokenizer.decode(list(request.token_ids), request.skip_special_tokens))

    @unary(SERVICE)
    async def CountTokens(self, request, context):
        kind = request.WhichOneof("input")
        if kind == "chat":
            if len(request.chat.messages) > self.limits.max_chat_messages:
                raise InvalidRequest(f"at most {self.limits.max_chat_messages} messages")
            ids = self.llm.encode_chat(chat_from_pb(request.chat.messages))
        else:
            ids = self.tokenizer.encode(self._text(request.text), add_bos=self._add_bos(request.add_special_tokens))
        return pb.CountTokensResponse(count=len(ids), max_context_length=self.llm.config.context_length)

    @unary(SERVICE)
    async def ApplyChatTemplate(self, request, context):
        if len(request.messages) > self.limits.max_chat_messages:
            raise InvalidRequest(f"at most {self.limits.max_chat_messages} messages")
        messages = chat_from_pb(request.messages)
        prompt = self.llm.chat_prompt(messages, request.add_generation_prompt)
        self._text(prompt)
        return pb.ApplyChatTemplateResponse(prompt=prompt, token_ids=self.tokenizer.encode(prompt, add_bos=False))

    @unary(SERVICE)
    async def Info(self, request, context):
        special = self.tokenizer.special
        return pb.TokenizerInfoResponse(
            model_name=self.llm.config.name, vocab_size=self.tokenizer.vocab_size, bos_token_id=special.bos_id,
            eos_token_id=special.eos_id, end_of_generation_token_ids=sorted(special.end_of_generation_ids),
            add_bos_token=special.add_bos, chat_template=self.llm.chat_template.source,
            max_context_length=self.llm.config.context_length)


async def run(server_config, limits: GenerationLimits, model_path: str | None) -> None:
    from ..common.grpc_server import serve
    llm = LLM.load(model_path or None)
    servicer = TokenizerServicer(llm, limits)

    async def ready() -> bool:
        return True

    await serve(server_config, [SERVICE], lambda s: tokenizer_pb2_grpc.add_TokenizerServicer_to_server(servicer, s),
                ready)

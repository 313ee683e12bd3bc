"""The Generation service (port 50053): validates a request, queues it on Redis as a job, and
relays the tokens a worker streams back. It computes nothing itself: it loads the model's
tokenizer and metadata, never runs the weights.

A request ends one of these ways, each a clean status: the job's final event; the client's
Cancel, deadline or disconnect (the job is cancelled and its worker frees its KV blocks);
Redis going away (UNAVAILABLE). A request the worker refuses comes back INVALID_ARGUMENT.
"""
from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid

import grpc

from engine.constraints import ConstraintError, GrammarCompiler, OutputConstraint
from engine.llm import LLM
from engine.sampling import SamplingParams
from engine.sequence import RequestOptions
from engine.speculation import SpeculationParams
from engine.stopping import StoppingCriteria

from ..api import common_pb2, generation_pb2_grpc
from ..api import generation_pb2 as pb
from ..common.config import GenerationLimits
from ..common.errors import InvalidRequest, ServiceError, unary
from ..common.errors import streaming as streaming_rpc
from ..common.jobs import AsyncJobClient, JobFailed, JobSpec, OutputEvent
from ..common.metrics import METRICS
from ..common.tracing import current_traceparent
from ..tokenizer.service import chat_from_pb
from .router import KVRouter
from .tools import NO_TOOLS, ToolPlan, ToolSupport, calls_of

SERVICE = "meshllm.v1.Generation"
log = logging.getLogger("meshllm.generation")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
FINISH_REASONS = {
    "length": common_pb2.FINISH_REASON_LENGTH, "eos": common_pb2.FINISH_REASON_EOS,
    "stop_sequence": common_pb2.FINISH_REASON_STOP_SEQUENCE, "stop_token": common_pb2.FINISH_REASON_STOP_TOKEN,
    "cancelled": common_pb2.FINISH_REASON_CANCELLED, "time_limit": common_pb2.FINISH_REASON_TIME_LIMIT,
}


class GenerationServicer(generation_pb2_grpc.GenerationServicer):
    def __init__(self, llm: LLM, jobs: AsyncJobClient, limits: GenerationLimits):
        self.llm = llm
        self.tokenizer = llm.tokenizer
        self.config = llm.config
        self.jobs = jobs
        self.router = KVRouter(jobs, jobs.config, llm.model.fingerprint)
        self.limits = limits
        self.grammars = GrammarCompiler(llm.tokenizer, llm.config.vocab_size)
        self.tools = ToolSupport(llm.tokenizer)

    # ------------------------------------------------------------------ request -> job

    def prompt_ids(self, request, tools: ToolPlan = NO_TOOLS) -> list[int]:
        kind = request.WhichOneof("input")
        limit = self.limits.max_input_chars
        if kind == "text":
            if not request.text:
                raise InvalidRequest("the prompt text is empty")
            if len(request.text) > limit:
                raise InvalidRequest(f"the prompt has {len(request.text)} characters; the limit is {limit}")
            return self.tokenizer.encode(request.text)
        if kind == "chat":
            messages = request.chat.messages
            if not messages:
                raise InvalidRequest("the chat has no messages")
            if len(messages) > self.limits.max_chat_messages:
                raise InvalidRequest(f"the chat has {len(messages)} messages; the limit is "
                                     f"{self.limits.max_chat_messages}")
            if sum(len(m.content) for m in messages) > limit:
                raise InvalidRequest(f"the chat's messages exceed {limit} characters")
            return self.llm.encode_chat(chat_from_pb(messages), tools=tools.template_tools)
        if kind == "token_ids":
            ids = list(request.token_ids.ids)
            if not ids:
                raise InvalidRequest("token_ids is empty")
            bad = [t for t in ids if t >= self.config.vocab_size]
            if bad:
                raise InvalidRequest(f"unknown token ids (the vocabulary has {self.config.vocab_size}): {bad[:5]}")
            return ids
        raise InvalidRequest("set one input: text, chat or token_ids")

    def options(self, request, prompt_len: int, tools: ToolPlan = NO_TOOLS) -> RequestOptions:
        context = self.config.context_length
        if prompt_len >= context:
            raise InvalidRequest(f"the prompt has {prompt_len} tokens; the model's context holds {context}")
        s, st, r = request.sampling, request.stopping, request.response
        sampling = SamplingParams(
            temperature=s.temperature if s.HasField("temperature") else 1.0, top_k=s.top_k,
            top_p=s.top_p if s.HasField("top_p") else 1.0, min_p=s.min_p,
            repetition_penalty=s.repetition_penalty if s.HasField("repetition_penalty") else 1.0,
            presence_penalty=s.presence_penalty, frequency_penalty=s.frequency_penalty,
            seed=s.seed if s.HasField("seed") else None, no_repeat_ngram_size=s.no_repeat_ngram_size)
        max_new = st.max_new_tokens
        if max_new == 0:
            max_new = min(self.limits.default_max_new_tokens, context - prompt_len)
        elif max_new > self.limits.max_new_tokens_limit:
            raise InvalidRequest(f"max_new_tokens is {max_new}; the limit is {self.limits.max_new_tokens_limit}")
        elif prompt_len + max_new > context:
            raise InvalidRequest(f"the prompt ({prompt_len} tokens) plus max_new_tokens ({max_new}) exceed the "
                                 f"model's context ({context})")
        bad = [t for t in st.stop_token_ids if t >= self.config.vocab_size]
        if bad:
            raise InvalidRequest(f"unknown stop token ids: {bad[:5]}")
        stopping = StoppingCriteria(max_new_tokens=max_new, stop_sequences=tuple(st.stop_sequences),
                                    stop_token_ids=tuple(st.stop_token_ids), ignore_eos=st.ignore_eos,
                                    include_stop_sequence=st.include_stop_sequence)
        if r.top_logprobs > self.limits.max_top_logprobs:
            raise InvalidRequest(f"top_logprobs is {r.top_logprobs}; the limit is {self.limits.max_top_logprobs}")
        speculation = SpeculationParams(num_draft_tokens=request.speculation.num_draft_tokens)
        constraint = constraint_from_pb(request.constraint) if request.HasField("constraint") else None
        if tools.constraint is not None:
            if constraint is not None:
                raise InvalidRequest("a required tool call already constrains the output: drop constraint, or "
                                     "set tool_choice to auto")
            constraint = tools.constraint
        return RequestOptions(sampling, stopping, r.logprobs, r.top_logprobs, not r.keep_special_tokens, speculation,
                              constraint)

    async def start(self, request) -> tuple[str, int, ToolPlan]:
        """Validate and queue the request; (job id, prompt tokens, its tools)."""
        if request.request_id and not _REQUEST_ID.match(request.request_id):
            raise InvalidRequest("request_id: 1-128 characters of letters, digits and . _ : -")
        tools = self.tools.plan(request.chat) if request.WhichOneof("input") == "chat" else NO_TOOLS
        ids = self.prompt_ids(request, tools)
        options = self.options(request, len(ids), tools)
        if options.constraint is not None:               # refused here, before it is queued
            try:
                await asyncio.to_thread(self.grammars.check, options.constraint)
            except ConstraintError as e:
                raise InvalidRequest(str(e)) from e
        job_id = request.request_id or uuid.uuid4().hex
        if not await self.jobs.reserve(job_id):
            raise ServiceError(grpc.StatusCode.ALREADY_EXISTS, f"request_id {job_id!r} is already in use")
        spec = JobSpec.from_options(job_id, ids, options)
        spec.traceparent = current_traceparent()          # the worker's span continues this RPC's trace
        route = await self.router.route(ids)
        try:
            await self.jobs.submit(spec, route)
        except asyncio.CancelledError:
            # the caller left while the job was being queued (Redis may hold it already: a replicated
            # submit waits for a replica after the XADD); relay, which cancels jobs, never starts
            asyncio.ensure_future(self._cancel_quietly(job_id))
            raise
        METRICS.prompt_tokens.inc(len(ids))
        return job_id, len(ids), tools

    async def relay(self, job_id: str, context):
        """The job's events; cancels the job if the call ends early (deadline, disconnect)."""
        started = time.perf_counter()
        last = None
        finished = False
        try:
            async for event in self.jobs.events(job_id):
                now = time.perf_counter()
                if event.token_id is not None:
                    METRICS.generated_tokens.inc()
                    if last is None:
                        METRICS.ttft.observe(now - started)
                    else:
                        METRICS.itl.observe(now - last)
                    last = now
                if event.is_final:
                    finished = True
                    METRICS.cached_prompt_tokens.inc(event.cached_prompt_tokens)
                    if event.finish_reason == "error":
                        raise JobFailed(event.error or "the worker failed", event.error_code or "internal")
                yield event
        finally:
            if not finished:                      # the caller went away: stop the worker's work too
                log.info("job %s: its caller went away; cancelling it", job_id)
                asyncio.ensure_future(self._cancel_quietly(job_id))

    async def _cancel_quietly(self, job_id: str) -> None:
        try:
            await self.jobs.cancel(job_id)
        except Exception as e:                    # noqa: BLE001 - best effort; the job's TTL still ends it
            log.warning("could not cancel job %s: %s", job_id, e)

    # ------------------------------------------------------------------ RPCs

    @unary(SERVICE)
    async def Generate(self, request, context):
        job_id, prompt_tokens, tools = await self.start(request)
        response = pb.GenerateResponse(request_id=job_id)
        text = []
        async for event in self.relay(job_id, context):
            text.append(event.text)
            _add_token(response, event, request.response)
            if event.is_final:
                _finish(response, event)
        response.text = "".join(text)
        if tools.parse_calls:
            content, calls = calls_of(response.text, tools)
            if calls:
                response.text = content
                _with_tool_calls(response, calls)
        return response

    @streaming_rpc(SERVICE)
    async def GenerateStream(self, request, context):
        job_id, prompt_tokens, tools = await self.start(request)
        completion = 0
        text = []
        async for event in self.relay(job_id, context):
            response = pb.GenerateResponse(request_id=job_id, text=event.text)
            completion += _add_token(response, event, request.response)
            if tools.parse_calls:
                text.append(event.text)
            if event.is_final:
                _finish(response, event, completion)
                if tools.parse_calls:
                    _with_tool_calls(response, calls_of("".join(text), tools)[1])
            yield response

    @unary(SERVICE)
    async def Cancel(self, request, context):
        if not _REQUEST_ID.match(request.request_id or ""):
            raise InvalidRequest("request_id is required")
        return pb.CancelResponse(found=await self.jobs.cancel(request.request_id))

    @unary(SERVICE)
    async def ModelInfo(self, request, context):
        cfg = self.config
        workers = await self.jobs.workers()
        return pb.ModelInfoResponse(
            model_name=cfg.name, architecture=cfg.architecture, fingerprint=self.llm.model.fingerprint,
            context_length=cfg.context_length, vocab_size=cfg.vocab_size, num_layers=cfg.num_layers,
            hidden_size=cfg.hidden_size, max_new_tokens_limit=self.limits.max_new_tokens_limit,
            workers=len(workers), queued_jobs=await self.jobs.outstanding())

    # ------------------------------------------------------------------ health and gauges

    async def ready(self) -> bool:
        await self.jobs.redis.ping()
        METRICS.redis_up.set(1)
        workers = await self.jobs.workers()
        METRICS.queue_length.set(await self.jobs.outstanding())
        METRICS.workers.set(len(workers))
        METRICS.running.set(sum(int(w.get("running", 0)) for w in workers))
        METRICS.waiting.set(sum(int(w.get("waiting", 0)) for w in workers))
        total = sum(int(w.get("kv_blocks", 0)) for w in workers)
        free = sum(int(w.get("kv_blocks_free", 0)) for w in workers)
        METRICS.kv_usage.set((total - free) / total if total else 0.0)
        rates = [float(w.get("prefix_hit_rate", 0)) for w in workers]
        METRICS.prefix_hit_rate.set(sum(rates) / len(rates) if rates else 0.0)
        METRICS.draft_tokens.set(sum(int(w.get("draft_tokens", 0)) for w in workers))
        METRICS.accepted_draft_tokens.set(sum(int(w.get("accepted_draft_tokens", 0)) for w in workers))
        METRICS.verify_steps.set(sum(int(w.get("verify_steps", 0)) for w in workers))
        for event in ("imported", "rejected", "exported"):
            METRICS.shared_kv_blocks.labels(event).set(sum(int(w.get(f"kv_{event}", 0)) for w in workers))
        METRICS.set_expert_load(workers)
        return True


def constraint_from_pb(message) -> OutputConstraint:
    """OutputConstraint (engine/constraints.py) of a GenerateRequest.constraint."""
    kind = message.WhichOneof("kind")
    if kind is None:
        raise InvalidRequest("constraint: set one of json_schema, json_object, regex, choice, lark_grammar, "
                             "gbnf_grammar")
    if kind == "json_object":
        if not message.json_object:
            raise InvalidRequest("constraint.json_object must be true when set")
        return OutputConstraint("json_object")
    if kind == "choice":
        return OutputConstraint("choice", json.dumps(list(message.choice.choices), ensure_ascii=False))
    return OutputConstraint({"lark_grammar": "lark", "gbnf_grammar": "gbnf"}.get(kind, kind), getattr(message, kind))


def _add_token(response, event: OutputEvent, options) -> int:
    if event.token_id is None:
        return 0
    response.token_ids.append(event.token_id)
    if options.logprobs or options.top_logprobs:
        response.tokens.append(pb.TokenInfo(
            token_id=event.token_id, logprob=event.logprob or 0.0,
            top_logprobs=[pb.TopLogprob(token_id=i, logprob=lp) for i, lp in event.top_logprobs]))
    return 1


def _with_tool_calls(response, calls) -> None:
    """The answer's calls on its last message; an answer that ended its turn with calls ends with
    TOOL_CALLS (one cut by max_new_tokens keeps LENGTH, its calls those that were complete)."""
    if not calls:
        return
    response.tool_calls.extend(calls)
    if response.finish_reason in (common_pb2.FINISH_REASON_EOS, common_pb2.FINISH_REASON_STOP_SEQUENCE,
                                  common_pb2.FINISH_REASON_STOP_TOKEN):
        response.finish_reason = common_pb2.FINISH_REASON_TOOL_CALLS


def _finish(response, event: OutputEvent, completion: int | None = None) -> None:
    response.finish_reason = FINISH_REASONS.get(event.finish_reason, common_pb2.FINISH_REASON_ERROR)
    generated = completion if completion is not None else len(response.token_ids)
    response.usage.CopyFrom(common_pb2.Usage(prompt_tokens=event.prompt_tokens, completion_tokens=generated,
                                             cached_prompt_tokens=event.cached_prompt_tokens))


async def run(server_config, limits: GenerationLimits, redis_config, queue_config, model_path: str | None) -> None:
    from ..common.grpc_server import serve
    from ..common.keys import Keys
    from ..common.redis_client import connect, replicated

    llm = LLM.load(model_path or None)
    client = connect(redis_config.redis_url, asyncio=True, max_connections=512, socket_connect_timeout=2,
                     health_check_interval=10)
    jobs = AsyncJobClient(client, Keys(redis_config.key_prefix), queue_config,
                          replicated=replicated(redis_config.redis_url))
    servicer = GenerationServicer(llm, jobs, limits)
    # structured output's tokenizer, built beside start-up (a constraint that comes first waits for it)
    warming = asyncio.ensure_future(asyncio.to_thread(servicer.grammars.warm))

    async def ready() -> bool:
        try:
            return await servicer.ready()
        except Exception:
            METRICS.redis_up.set(0)
            raise

    await serve(server_config, [SERVICE], lambda s: generation_pb2_grpc.add_GenerationServicer_to_server(servicer, s),
                ready)
    await warming

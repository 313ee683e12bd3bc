"""Structured output (engine/constraints.py) on the real SmolLM2: every constrained generation is
valid, whatever the sampling settings, inside continuous batching."""
from __future__ import annotations

import json
import re

import jsonschema
import numpy as np
import pytest
from test_engine_serving import run_all

from engine.constraints import ConstraintError, OutputConstraint
from engine.llm_engine import EngineConfig, LLMEngine
from engine.sampling import GREEDY, SamplingParams
from engine.sequence import RequestOptions
from engine.stopping import FinishReason, StoppingCriteria

SCHEMAS = {
    "person": {"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 24}, "age": {"type": "integer", "minimum": 0, "maximum": 120}},
        "required": ["name", "age"], "additionalProperties": False},
    "enum_color": {"type": "object", "properties": {"color": {"enum": ["red", "green", "blue"]}},
                   "required": ["color"], "additionalProperties": False},
    "bounded_number": {"type": "object", "properties": {
        "temperature": {"type": "number", "minimum": -40, "maximum": 60},
        "humid": {"type": "boolean"}}, "required": ["temperature", "humid"], "additionalProperties": False},
    "tags_array": {"type": "object", "properties": {
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "minItems": 1, "maxItems": 4}},
        "required": ["tags"], "additionalProperties": False},
    "nested": {"type": "object", "properties": {
        "book": {"type": "object", "properties": {
            "title": {"type": "string", "maxLength": 30},
            "author": {"type": "object", "properties": {"first": {"type": "string", "maxLength": 12},
                                                        "last": {"type": "string", "maxLength": 12}},
                       "required": ["first", "last"], "additionalProperties": False}},
            "required": ["title", "author"], "additionalProperties": False}},
        "required": ["book"], "additionalProperties": False},
    "array_of_objects": {"type": "object", "properties": {
        "items": {"type": "array", "maxItems": 3, "items": {
            "type": "object", "properties": {"sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2}$"},
                                             "qty": {"type": "integer", "minimum": 1, "maximum": 9}},
            "required": ["sku", "qty"], "additionalProperties": False}}},
        "required": ["items"], "additionalProperties": False},
    "optional_fields": {"type": "object", "properties": {
        "city": {"type": "string", "maxLength": 20}, "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
        "required": ["city"], "additionalProperties": False},
    "top_level_array": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 999},
                        "minItems": 2, "maxItems": 5},
    "any_of": {"type": "object", "properties": {"answer": {"anyOf": [
        {"type": "integer", "minimum": 0, "maximum": 10}, {"enum": ["unknown"]}]}},
        "required": ["answer"], "additionalProperties": False},
    "const_and_ref": {"type": "object", "$defs": {"point": {"type": "object", "properties": {
        "x": {"type": "integer", "minimum": -5, "maximum": 5}, "y": {"type": "integer", "minimum": -5, "maximum": 5}},
        "required": ["x", "y"], "additionalProperties": False}},
        "properties": {"kind": {"const": "segment"}, "start": {"$ref": "#/$defs/point"},
                       "end": {"$ref": "#/$defs/point"}},
        "required": ["kind", "start", "end"], "additionalProperties": False},
}

SEEDS = range(10)


def chat_prompt(llm, text: str) -> list[int]:
    return llm.encode_chat([{"role": "user", "content": text}])


def generate(llm, prompts_and_options):
    engine = LLMEngine(llm.model, llm.tokenizer, EngineConfig(num_kv_blocks=512, max_num_seqs=64))
    return run_all(engine, [p for p, _ in prompts_and_options], [o for _, o in prompts_and_options])


def text_of(events) -> str:
    return "".join(e.text for e in events)


def test_100_generations_over_10_schemas_all_validate(llm):
    """10 schemas (nested objects, arrays, enums, bounded numbers, patterns, anyOf, $ref) x 10
    seeds at temperature 1 with top-p, penalties on some: all 100 parse and validate, and end
    because the grammar was complete, not at the length limit."""
    jobs, expected = [], []
    for name, schema in SCHEMAS.items():
        ids = chat_prompt(llm, f"Reply with a JSON value for a {name.replace('_', ' ')}.")
        constraint = OutputConstraint("json_schema", json.dumps(schema))
        for seed in SEEDS:
            sampling = SamplingParams(temperature=1.0, top_p=0.95, seed=seed,
                                      frequency_penalty=0.5 if seed % 2 else 0.0)
            jobs.append((ids, RequestOptions(sampling, StoppingCriteria(200), constraint=constraint)))
            expected.append(schema)
    results = generate(llm, jobs)
    for schema, events in zip(expected, results, strict=True):
        text = text_of(events)
        assert events[-1].finish_reason is FinishReason.END_OF_TURN, (text, events[-1].finish_reason)
        jsonschema.validate(json.loads(text), schema)


def test_regex_choice_lark_and_gbnf(llm):
    ids = chat_prompt(llm, "What is the date of the moon landing? Then say yes or no.")
    greedy = RequestOptions(GREEDY, StoppingCriteria(80))
    cases = [
        (OutputConstraint("regex", r"[0-9]{4}-[0-9]{2}-[0-9]{2}"), lambda t: re.fullmatch(r"\d{4}-\d{2}-\d{2}", t)),
        (OutputConstraint("choice", json.dumps(["yes", "no", "it \"depends\"\n"])),
         lambda t: t in ("yes", "no", 'it "depends"\n')),
        (OutputConstraint("lark", 'start: "Answer: " ANSWER "."\nANSWER: /(yes|no)/'),
         lambda t: t in ("Answer: yes.", "Answer: no.")),
        (OutputConstraint("gbnf", 'root ::= "The year " [0-9] [0-9] [0-9] [0-9] "."'),
         lambda t: re.fullmatch(r"The year \d{4}\.", t)),
        (OutputConstraint("json_object"), lambda t: isinstance(json.loads(t), dict)),
    ]
    json_ids = chat_prompt(llm, 'Give a JSON object with the keys "name" and "age" of a person.')
    results = generate(llm, [(json_ids if c.kind == "json_object" else ids,
                              RequestOptions(greedy.sampling, greedy.stopping, constraint=c)) for c, _ in cases])
    for (constraint, valid), events in zip(cases, results, strict=True):
        assert valid(text_of(events)), (constraint.kind, text_of(events))
        assert events[-1].finish_reason is FinishReason.END_OF_TURN


def test_the_mask_allows_exactly_the_tokens_that_keep_the_output_valid(llm):
    """After '{"color": "' only the enum's continuations are allowed; the constrained greedy
    token is the unconstrained model's best among them."""
    engine = LLMEngine(llm.model, llm.tokenizer, EngineConfig(num_kv_blocks=64))
    decoder = engine.grammars.decoder(OutputConstraint("json_schema", json.dumps(SCHEMAS["enum_color"])))
    for token in llm.tokenizer.encode('{"color": "', add_bos=False):
        decoder.accept(token)
    allowed = np.flatnonzero(decoder.allowed())
    texts = {llm.tokenizer.decode([int(t)]) for t in allowed}
    assert texts and all(any(c.startswith(t) for c in ("red\"", "green\"", "blue\"")) for t in texts), texts
    assert {"r", "g", "b"} <= {t[0] for t in texts}
    logits = np.random.default_rng(0).standard_normal(llm.config.vocab_size).astype(np.float32)
    masked = decoder.masked(logits)
    assert int(np.argmax(masked)) == int(allowed[np.argmax(logits[allowed])])
    assert np.isneginf(np.delete(masked, allowed)).all()


@pytest.mark.parametrize("constraint,message", [
    (("json_schema", '{"type": "strin"}'), "strin"),
    (("json_schema", "{not json"), "not valid JSON"),
    (("regex", "[a-z]+("), "unclosed group"),
    (("lark", 'start: "x" <|no_such_token|>'), "unknown special token"),
    (("lark", "start: <[999999]>"), "too large"),
    (("choice", "[]"), "non-empty"),
    (("gbnf", "root ::= missing"), "missing"),
])
def test_a_constraint_the_tokenizer_cannot_satisfy_is_refused_before_generation(llm, constraint, message):
    engine = LLMEngine(llm.model, llm.tokenizer, EngineConfig(num_kv_blocks=64))
    with pytest.raises(ConstraintError, match=re.escape(message)):
        engine.add_request("bad", chat_prompt(llm, "hi"),
                           RequestOptions(GREEDY, StoppingCriteria(8), constraint=OutputConstraint(*constraint)))
    assert not engine.has_work()


def test_unknown_kind_and_oversized_constraints_are_refused():
    with pytest.raises(ConstraintError, match="kind"):
        OutputConstraint("xml", "<a/>")
    with pytest.raises(ConstraintError, match="limit"):
        OutputConstraint("regex", "a" * 70_000)


def test_a_resumed_constrained_sequence_continues_the_same_output(llm):
    """A worker that takes over a job replays what was streamed into the parser too, and goes on
    to the same valid output (greedy)."""
    ids = chat_prompt(llm, "A person as JSON.")
    options = RequestOptions(GREEDY, StoppingCriteria(60),
                             constraint=OutputConstraint("json_schema", json.dumps(SCHEMAS["person"])))
    whole = run_all(LLMEngine(llm.model, llm.tokenizer, EngineConfig(num_kv_blocks=64)), [ids], options)[0]
    tokens = [e.token_id for e in whole]
    engine = LLMEngine(llm.model, llm.tokenizer, EngineConfig(num_kv_blocks=64))
    engine.add_request("again", ids, options, resumed_output=tokens[:5])
    rest = []
    while engine.has_work():
        for out in engine.step():
            rest += out.events
    assert tokens[:5] + [e.token_id for e in rest] == tokens
    jsonschema.validate(json.loads(text_of(whole)), SCHEMAS["person"])

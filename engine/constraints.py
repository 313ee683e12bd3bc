"""Constrained decoding: output held to a JSON schema, a regular expression, a choice or a grammar.

    compiler = GrammarCompiler(tokenizer, vocab_size)       # once per process (~1 s for 150k tokens)
    decoder = compiler.decoder(OutputConstraint("json_schema", schema_text))   # per request
    logits = decoder.masked(logits)   # -inf on every token that cannot continue a valid output
    decoder.accept(token)             # after the sampler chose it

The grammar engine is llguidance (the one vLLM, SGLang and llama.cpp use). It was chosen over
xgrammar and outlines-core: xgrammar's wheel requires torch and transformers, which our runtime
does not carry; outlines-core compiles a regular expression into a token index ahead of time,
has no context-free grammars (no Lark, no GBNF, no recursive schemas) and can take seconds on a
large schema; llguidance computes each step's mask on the fly from an Earley parser over the
token trie (65-145 us a token for Qwen's 151 936 tokens here, bench/bench_constraints.py), has
no dependencies, and takes JSON schemas, regular expressions and Lark grammars (GBNF through its
converter) alike.

Kinds of OutputConstraint (value):
- json_schema: a JSON schema, as JSON text;
- json_object: any JSON object (value ignored), OpenAI's response_format json_object;
- regex: a regular expression (Rust regex syntax) the whole output matches;
- choice: a JSON list of strings, the output is exactly one of them;
- lark: a Lark grammar in llguidance's dialect (rule `start`; `%json {...}` inlines a schema);
- gbnf: a llama.cpp GBNF grammar (rule `root`), converted to Lark.

The mask applies after the penalties and before temperature, top-k, top-p and the draw (vLLM's
order), so every sampling setting works on the allowed tokens only. When the grammar has
nothing more to add (a JSON object's closing brace) the sequence finishes, as at an
end-of-turn token. A grammar the tokenizer cannot express (an unknown special token, a token
id past the vocabulary), a schema that is not one, or a bad regular expression is a
ConstraintError, raised before generation starts.
"""
from __future__ import annotations

import json
import threading
from dataclasses import dataclass

import numpy as np
from numba import njit

from .tokenizer import CONTROL, USER_DEFINED, Tokenizer

KINDS = ("json_schema", "json_object", "regex", "choice", "lark", "gbnf")
MAX_CONSTRAINT_CHARS = 64 * 1024
# JSON is written on one line with ", " and ": " between items (a schema's "x-guidance" options
# override this): free whitespace lets a small model pad an object with newlines until the
# length limit, the failure OpenAI's JSON mode warns about.
JSON_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


class ConstraintError(ValueError):
    """The constraint is malformed, or no output of this tokenizer can satisfy it."""


@dataclass(frozen=True)
class OutputConstraint:
    kind: str
    value: str = ""

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ConstraintError(f"constraint kind must be one of {', '.join(KINDS)}; got {self.kind!r}")
        if len(self.value) > MAX_CONSTRAINT_CHARS:
            raise ConstraintError(f"the {self.kind} constraint has {len(self.value)} characters; "
                                  f"the limit is {MAX_CONSTRAINT_CHARS}")
        if self.kind not in ("json_object",) and not self.value.strip():
            raise ConstraintError(f"the {self.kind} constraint is empty")

    def as_dict(self) -> dict:
        return {"kind": self.kind, "value": self.value}


def grammar_source(constraint: OutputConstraint) -> str:
    """The constraint as an llguidance grammar (its JSON grammar format, or Lark text)."""
    import llguidance
    from llguidance import LLMatcher

    kind, value = constraint.kind, constraint.value
    try:
        if kind == "json_schema":
            schema = json.loads(value)
            if not isinstance(schema, (dict, bool)):
                raise ConstraintError("json_schema must be a JSON object (a schema)")
            return LLMatcher.grammar_from_json_schema(schema, defaults=JSON_LAYOUT)
        if kind == "json_object":
            return LLMatcher.grammar_from_json_schema({"type": "object"}, defaults=JSON_LAYOUT)
        if kind == "regex":
            return LLMatcher.grammar_from_regex(value)
        if kind == "choice":
            options = json.loads(value)
            if (not isinstance(options, list) or not options
                    or not all(isinstance(o, str) and o for o in options)):
                raise ConstraintError("choice must be a non-empty JSON list of non-empty strings")
            return LLMatcher.grammar_from_lark("start: " + " | ".join(_lark_literal(o) for o in options))
        if kind == "lark":
            return LLMatcher.grammar_from_lark(value)
        return LLMatcher.grammar_from_lark(llguidance.gbnf_to_lark.gbnf_to_lark(value))
    except json.JSONDecodeError as e:
        raise ConstraintError(f"the {kind} constraint is not valid JSON: {e}") from e
    except ConstraintError:
        raise
    except Exception as e:                      # the GBNF converter and the JSON compiler raise plainly
        raise ConstraintError(f"the {kind} constraint does not compile: {e}") from e


def _lark_literal(text: str) -> str:
    """text as a Lark string literal (JSON's escapes, which llguidance's Lark accepts)."""
    return json.dumps(text, ensure_ascii=False)


class _TokenizerView:
    """What llguidance's LLTokenizer reads: each token's bytes (special ones marked with a leading
    0xFF, so that no text can spell them), the special ids, and a tokenize function."""

    is_tokenizer_wrapper = True

    def __init__(self, tokenizer: Tokenizer, vocab_size: int):
        marked = []
        for piece, kind in zip(tokenizer.token_bytes, tokenizer.token_types, strict=True):
            special = kind == CONTROL or (kind == USER_DEFINED and piece.startswith(b"<") and piece.endswith(b">"))
            marked.append(b"\xff" + piece if special else piece)
        marked += [b""] * (vocab_size - len(marked))      # rows of the output matrix past the vocabulary
        self.tokens = marked
        self.eos_token_id = tokenizer.special.eos_id
        self.bos_token_id = tokenizer.special.bos_id
        self.special_token_ids = sorted(tokenizer.special_ids)
        self._tokenizer = tokenizer

    def __call__(self, text):
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        return self._tokenizer.encode(text, add_bos=False)


class GrammarCompiler:
    """Compiles constraints for one tokenizer. The llguidance tokenizer is built on first use (or
    by warm()), once; decoders are cheap (a few ms for a typical schema)."""

    def __init__(self, tokenizer: Tokenizer, vocab_size: int):
        self._tokenizer = tokenizer
        self.vocab_size = vocab_size
        self._ll_tokenizer = None
        self._lock = threading.Lock()

    def warm(self) -> None:
        """Build the llguidance tokenizer and compile the mask kernel now, not on a request."""
        self._ll()
        _apply_bitmask(np.zeros(32, np.float32), np.zeros(1, np.uint32), np.empty(32, np.float32))

    def _ll(self):
        with self._lock:
            if self._ll_tokenizer is None:
                from llguidance import LLTokenizer
                eos = sorted(self._tokenizer.special.end_of_generation_ids) or None
                self._ll_tokenizer = LLTokenizer(_TokenizerView(self._tokenizer, self.vocab_size), eos_token=eos)
            return self._ll_tokenizer

    def check(self, constraint: OutputConstraint) -> str:
        """The grammar of a constraint, validated against this tokenizer (ConstraintError if not)."""
        from llguidance import LLMatcher
        grammar = grammar_source(constraint)
        problem = LLMatcher.validate_grammar(grammar, self._ll())
        if problem:
            raise ConstraintError(f"the {constraint.kind} constraint cannot be used: {problem.strip()}")
        return grammar

    def decoder(self, constraint: OutputConstraint) -> ConstrainedDecoder:
        from llguidance import LLMatcher
        matcher = LLMatcher(self._ll(), self.check(constraint), log_level=0)
        if matcher.is_error():
            raise ConstraintError(f"the {constraint.kind} constraint cannot be used: {matcher.get_error()}")
        return ConstrainedDecoder(matcher, self.vocab_size)


class ConstrainedDecoder:
    """One sequence's parser state: which tokens may come next, advanced by each chosen token."""

    def __init__(self, matcher, vocab_size: int):
        self._matcher = matcher
        self._vocab_size = vocab_size

    def allowed(self) -> np.ndarray:
        """(vocab_size,) bool: the tokens that keep the output valid."""
        bits = np.frombuffer(self._matcher.compute_bitmask(), np.uint8)
        return np.unpackbits(bits, bitorder="little")[:self._vocab_size].astype(bool)

    def masked(self, logits: np.ndarray) -> np.ndarray:
        """A copy of logits (vocab,) with -inf on every token the grammar refuses."""
        words = np.frombuffer(self._matcher.compute_bitmask(), np.uint32)
        out = np.empty(logits.shape[0], np.float32)
        if not _apply_bitmask(np.ascontiguousarray(logits, np.float32), words, out):
            raise ConstraintError(f"the grammar allows no token here ({self._matcher.get_error() or 'dead end'})")
        return out

    def accept(self, token: int) -> None:
        if not self._matcher.consume_token(int(token)):
            raise ConstraintError(f"token {token} breaks the grammar: {self._matcher.get_error()}")

    @property
    def is_complete(self) -> bool:
        """Nothing can follow: the output is finished (it may still end with an end-of-turn token)."""
        return self._matcher.is_stopped()

    @property
    def is_accepting(self) -> bool:
        return self._matcher.is_accepting()


@njit(cache=True, nogil=True)
def _apply_bitmask(logits, words, out):
    """out (V,) f32 = logits (V,) f32 where bit t of words (ceil(V/32),) u32 is set, else -inf
    (bit t is bit t % 32 of word t // 32, llguidance's layout). Whole words of 0 bits, the common
    case in a grammar's mask, are filled without looking at their bits; the others select branch-
    free. Returns whether any token is allowed."""
    V = logits.shape[0]
    neg = np.float32(-np.inf)
    any_allowed = False
    for w in range(words.shape[0]):
        m = np.uint32(words[w])
        base = w * 32
        if base + 32 > V:                                  # the last, partial word
            for t in range(base, V):
                allowed = (m >> np.uint32(t - base)) & np.uint32(1)
                out[t] = logits[t] if allowed else neg
                any_allowed |= allowed != 0
            continue
        if m == 0:
            out[base:base + 32] = neg
            continue
        any_allowed = True
        for j in range(32):
            out[base + j] = logits[base + j] if (m >> np.uint32(j)) & np.uint32(1) else neg
    return any_allowed

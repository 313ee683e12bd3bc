"""When a generation ends, and how stop sequences cut the streamed text exactly."""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

MAX_STOP_SEQUENCES = 16
MAX_STOP_SEQUENCE_CHARS = 256


class FinishReason(str, Enum):
    LENGTH = "length"                  # max_new_tokens reached (or the context is full)
    END_OF_TURN = "eos"                # the model emitted an end-of-generation token
    STOP_TOKEN = "stop_token"          # one of stop_token_ids
    STOP_SEQUENCE = "stop_sequence"    # one of stop_sequences appeared in the text
    CANCELLED = "cancelled"
    ERROR = "error"


class StoppingError(ValueError):
    """A stopping criterion is out of range."""


@dataclass(frozen=True)
class StoppingCriteria:
    max_new_tokens: int = 256
    stop_sequences: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False           # keep going past end-of-generation tokens
    include_stop_sequence: bool = False

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise StoppingError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if len(self.stop_sequences) > MAX_STOP_SEQUENCES:
            raise StoppingError(f"at most {MAX_STOP_SEQUENCES} stop sequences, got {len(self.stop_sequences)}")
        for s in self.stop_sequences:
            if not s:
                raise StoppingError("stop sequences must not be empty")
            if len(s) > MAX_STOP_SEQUENCE_CHARS:
                raise StoppingError(f"stop sequences are limited to {MAX_STOP_SEQUENCE_CHARS} characters")


@dataclass
class StopSequenceMatcher:
    """Holds back streamed text that could still turn into a stop sequence.

    feed(delta) returns the text that is safe to emit now; once a stop sequence appears, `stopped`
    is set and the text up to (or through, with include_stop) its start is all that was emitted.
    """
    stop_sequences: tuple[str, ...]
    include_stop: bool = False
    stopped: bool = False
    matched: str | None = None
    _pending: str = field(default="", repr=False)

    def feed(self, delta: str) -> str:
        if self.stopped:
            return ""
        if not self.stop_sequences:
            return delta
        text = self._pending + delta
        first = None
        for s in self.stop_sequences:
            i = text.find(s)
            if i >= 0 and (first is None or i < first[0]):
                first = (i, s)
        if first is not None:
            i, s = first
            self.stopped = True
            self.matched = s
            self._pending = ""
            return text[: i + len(s)] if self.include_stop else text[:i]
        hold = self._longest_prefix_suffix(text)
        self._pending = text[len(text) - hold:] if hold else ""
        return text[: len(text) - hold]

    def flush(self) -> str:
        """Text held back when the generation ends for another reason."""
        out, self._pending = self._pending, ""
        return "" if self.stopped else out

    def _longest_prefix_suffix(self, text: str) -> int:
        """Length of the longest end of text that begins some stop sequence."""
        best = 0
        for s in self.stop_sequences:
            for n in range(min(len(s) - 1, len(text)), best, -1):
                if text.endswith(s[:n]):
                    best = n
                    break
        return best

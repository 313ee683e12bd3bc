"""Streaming detokenization that never emits a broken UTF-8 sequence.

Tokens are byte strings: one character can span several tokens (an emoji is often 3-4 byte
tokens). Bytes are fed to an incremental UTF-8 decoder, which returns only whole characters and
keeps an incomplete tail until the next token completes it. Bytes that can never form a character
become U+FFFD, as `bytes.decode(errors="replace")` would.
"""
from __future__ import annotations

import codecs

from .tokenizer import NORMAL, Tokenizer


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Tokenizer, skip_special: bool = True, strip_leading_space: bool = False):
        self._tokenizer = tokenizer
        self._skip_special = skip_special
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        # SentencePiece models mark word starts with a space; a completion that starts a text
        # (not continues one) drops it, as the tokenizer's decode does.
        self._strip_leading_space = strip_leading_space and tokenizer.add_space_prefix
        self._started = False

    def push(self, token_id: int) -> str:
        """Text completed by this token: '' while a character is still partial."""
        tok = self._tokenizer
        if self._skip_special and token_id in tok.special_ids:
            return ""
        text = self._decoder.decode(tok.token_bytes[token_id], final=False)
        if not self._started and text:
            self._started = True
            if self._strip_leading_space and text.startswith(" ") and tok.token_types[token_id] == NORMAL:
                text = text[1:]
        return text

    def flush(self) -> str:
        """Whatever is left at the end of the stream (an incomplete tail becomes U+FFFD)."""
        return self._decoder.decode(b"", final=True)

"""A tokenizer built from a GGUF vocabulary with the `tokenizers` library.

Two GGUF tokenizer models:
- "gpt2": byte-level BPE with the file's merges (SmolLM, Llama 3, ...). The pre-tokenizer follows
  `tokenizer.ggml.pre`, as llama.cpp does.
- "llama": SentencePiece BPE (Llama 2, TinyLlama, Mistral); merges are derived from the vocabulary
  scores, byte tokens <0xNN> fall back for unknown characters.

Control and user-defined tokens are special: they are matched whole in input text (so a chat
prompt's <|im_start|> is one token) and can be skipped when decoding. Decoding goes through
`token_bytes`, the exact bytes of each token, so a stream of tokens can be turned into text
without ever splitting a UTF-8 sequence (see detokenizer.py).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np
from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from .gguf_file import GGUFError, GGUFFile

log = logging.getLogger(__name__)

# tokenizer.ggml.token_type values
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

_GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3_SPLIT = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+"
                 r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# llama.cpp's LLAMA_VOCAB_PRE_TYPE_QWEN2: Llama 3's split with digits one by one
_QWEN2_SPLIT = _LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")

# Token texts that end a turn or a document in common chat formats (llama.cpp marks the same).
_END_OF_GENERATION_TEXTS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<|endoftext|>", "<|eom_id|>",
                            "</s>", "<end_of_turn>", "<|end_of_text|>")


def _byte_level_decoder_table() -> dict[str, int]:
    """GPT-2's reversible map between bytes and printable unicode characters, inverted."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(printable, chars)}


def _pre_tokenizer(pre: str):
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    if pre in ("llama-bpe", "llama3", "smaug-bpe"):
        split = pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated")
        return pre_tokenizers.Sequence([split, byte_level])
    if pre in ("qwen2", "deepseek-r1-qwen"):
        split = pre_tokenizers.Split(Regex(_QWEN2_SPLIT), behavior="isolated")
        return pre_tokenizers.Sequence([split, byte_level])
    split = pre_tokenizers.Split(Regex(_GPT2_SPLIT), behavior="isolated")
    if pre == "smollm":
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), split, byte_level])
    if pre not in ("default", "gpt2", "gpt-2"):
        log.warning("tokenizer.ggml.pre=%r is not known here; using the GPT-2 split", pre)
    return pre_tokenizers.Sequence([split, byte_level])


@dataclass(frozen=True)
class SpecialTokens:
    bos_id: int | None
    eos_id: int | None
    end_of_generation_ids: frozenset[int]    # any of these ends a generation (EOS, end of turn)
    add_bos: bool


class Tokenizer:
    def __init__(self, hf: HFTokenizer, pieces: list[str], token_types: list[int],
                 token_bytes: list[bytes], special: SpecialTokens, chat_template: str | None,
                 add_space_prefix: bool, model_name: str = ""):
        self._hf = hf
        self.pieces = pieces
        self.token_types = token_types
        self.token_bytes = token_bytes
        self.special = special
        self.chat_template = chat_template
        self.add_space_prefix = add_space_prefix
        self.model_name = model_name        # the file's name without .gguf, for messages
        self.special_ids = frozenset(i for i, t in enumerate(token_types) if t == CONTROL)

    @property
    def vocab_size(self) -> int:
        return len(self.pieces)

    # ---------------------------------------------------------------- construction

    @classmethod
    def from_gguf(cls, gguf: GGUFFile) -> Tokenizer:
        md = gguf.metadata
        model = md.get("tokenizer.ggml.model")
        pieces = md.get("tokenizer.ggml.tokens")
        if pieces is None:
            raise GGUFError(f"{gguf.path!r} has no tokenizer vocabulary")
        n = len(pieces)
        types = [int(t) for t in md.get("tokenizer.ggml.token_type", [NORMAL] * n)]
        vocab = {p: i for i, p in enumerate(pieces)}
        add_space_prefix = bool(md.get("tokenizer.ggml.add_space_prefix", model == "llama"))

        if model == "gpt2":
            merges = [tuple(m.split(" ", 1)) for m in md.get("tokenizer.ggml.merges", [])]
            pre = md.get("tokenizer.ggml.pre", "default")
            bpe = models.BPE(vocab=vocab, merges=merges, ignore_merges=pre in ("llama-bpe", "llama3"))
            hf = HFTokenizer(bpe)
            hf.pre_tokenizer = _pre_tokenizer(pre)
            hf.decoder = decoders.ByteLevel()
            table = _byte_level_decoder_table()
            token_bytes = [bytes(table[c] for c in p) if all(c in table for c in p) else p.encode()
                           for p in pieces]
            add_space_prefix = False        # byte-level BPE carries spaces in its tokens
        elif model == "llama":
            scores = md.get("tokenizer.ggml.scores")
            merges = _merges_from_scores(pieces, scores, types, vocab)
            unk_id = md.get("tokenizer.ggml.unknown_token_id", 0)
            bpe = models.BPE(vocab=vocab, merges=merges, unk_token=pieces[unk_id], byte_fallback=True,
                             fuse_unk=True)
            hf = HFTokenizer(bpe)
            steps = [normalizers.Replace(" ", "▁")]
            if add_space_prefix:
                steps.insert(0, normalizers.Prepend("▁"))
            hf.normalizer = normalizers.Sequence(steps)
            hf.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
            token_bytes = [_spm_piece_bytes(p, t) for p, t in zip(pieces, types)]
        else:
            raise GGUFError(f"tokenizer model {model!r} is not supported (gpt2 or llama)")

        specials = [AddedToken(pieces[i], special=True, normalized=False)
                    for i, t in enumerate(types) if t in (CONTROL, USER_DEFINED)]
        hf.add_special_tokens(specials)
        for i, t in enumerate(types):
            if t in (CONTROL, USER_DEFINED):
                token_bytes[i] = pieces[i].encode()

        def get_id(key):
            v = md.get(key)
            return int(v) if v is not None and 0 <= int(v) < n else None

        bos, eos = get_id("tokenizer.ggml.bos_token_id"), get_id("tokenizer.ggml.eos_token_id")
        end_ids = {i for i in (eos, get_id("tokenizer.ggml.eot_token_id"), get_id("tokenizer.ggml.eom_token_id"))
                   if i is not None}
        end_ids |= {vocab[t] for t in _END_OF_GENERATION_TEXTS if t in vocab and types[vocab[t]] == CONTROL}
        special = SpecialTokens(bos, eos, frozenset(end_ids),
                                bool(md.get("tokenizer.ggml.add_bos_token", model == "llama")))
        return cls(hf, list(pieces), types, token_bytes, special, md.get("tokenizer.chat_template"),
                   add_space_prefix, model_name=os.path.splitext(os.path.basename(gguf.path))[0])

    # ---------------------------------------------------------------- use

    def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
        """Token ids of text; special-token texts in it become their single ids.

        add_bos None follows the model's metadata (tokenizer.ggml.add_bos_token).
        """
        ids = self._hf.encode(text, add_special_tokens=False).ids
        return self._with_bos(ids, add_bos)

    def encode_with_offsets(self, text: str, add_bos: bool | None = None):
        """(ids, [(start, end) character offsets into text]) for each token."""
        enc = self._hf.encode(text, add_special_tokens=False)
        ids, offsets = list(enc.ids), [tuple(o) for o in enc.offsets]
        if self._bos_wanted(add_bos) and (not ids or ids[0] != self.special.bos_id):
            ids.insert(0, self.special.bos_id)
            offsets.insert(0, (0, 0))
        return ids, offsets

    def _bos_wanted(self, add_bos):
        want = self.special.add_bos if add_bos is None else add_bos
        return want and self.special.bos_id is not None

    def _with_bos(self, ids, add_bos):
        if self._bos_wanted(add_bos) and (not ids or ids[0] != self.special.bos_id):
            return [self.special.bos_id] + ids
        return list(ids)

    def decode(self, ids, skip_special: bool = False) -> str:
        data = b"".join(self.token_bytes[i] for i in ids if not (skip_special and i in self.special_ids))
        text = data.decode("utf-8", errors="replace")
        if self.add_space_prefix and text.startswith(" ") and ids and self.token_types[ids[0]] == NORMAL:
            text = text[1:]
        return text

    def is_valid_id(self, token_id: int) -> bool:
        return 0 <= token_id < len(self.pieces)


def _spm_piece_bytes(piece: str, token_type: int) -> bytes:
    if token_type == BYTE and len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
        return bytes([int(piece[3:5], 16)])
    return piece.replace("▁", " ").encode()


def _merges_from_scores(pieces, scores, types, vocab) -> list[tuple[str, str]]:
    """SentencePiece BPE merges: every split of a normal piece into two vocabulary pieces, pieces
    with the best score first (llama.cpp merges the adjacent pair whose join scores best).

    This runs at every load (Gemma 3: 262k pieces, 513k merges), so the order comes from one numpy
    argsort rather than sorting a tuple per merge. Splits of one piece keep their cut order: they
    all make the same piece, so which one BPE tries first does not change its output.
    """
    if scores is None:
        raise GGUFError("a SentencePiece ('llama') vocabulary needs tokenizer.ggml.scores")
    by_score = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable").tolist()
    merges = []
    for i in by_score:
        piece = pieces[i]
        if types[i] != NORMAL or len(piece) < 2:
            continue
        for cut in range(1, len(piece)):
            left = piece[:cut]
            if left in vocab:
                right = piece[cut:]
                if right in vocab:
                    merges.append((left, right))
    return merges

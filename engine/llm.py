"""A loaded model with its tokenizer and chat template: what a caller needs to turn text into text."""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np

from .chat_template import ChatMessage, ChatTemplate
from .device import load_model, resolve_device
from .gguf_file import GGUFError, GGUFFile
from .model import DecoderModel, ForwardBatch
from .model_registry import resolve_model
from .tokenizer import Tokenizer

log = logging.getLogger(__name__)


class LLM:
    def __init__(self, model: DecoderModel, tokenizer: Tokenizer):
        self.model = model
        self.tokenizer = tokenizer
        self.chat_template = ChatTemplate.of_tokenizer(tokenizer)

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, int8_activations: bool = False, device: str = "cpu") -> LLM:
        """path: a GGUF file or a catalogue name (engine.model_registry); None: its DEFAULT_MODEL.
        device: "cpu", "cuda" or "auto" (CUDA when numba finds a GPU), see engine.device."""
        resolved = resolve_device(device)            # before reading anything: a bad device fails fast
        gguf = GGUFFile.open(resolve_model(path))
        try:
            model = load_model(gguf, resolved, int8_activations)
        except GGUFError as e:
            if (device or "auto").lower() != "auto" or resolved != "cuda":
                raise
            # auto found a GPU, but the CUDA kernels lack this architecture or a tensor type
            log.warning("%s; running on the CPU", e)
            model = load_model(gguf, "cpu", int8_activations)
        return cls(model, Tokenizer.from_gguf(gguf))

    @property
    def config(self):
        return self.model.config

    def encode(self, text: str) -> list[int]:
        """Prompt ids for plain text: BOS only if the model's metadata asks for it."""
        return self.tokenizer.encode(text)

    @property
    def has_chat_template(self) -> bool:
        """False for a base model: chat_prompt and encode_chat raise ChatTemplateError; send plain text."""
        return self.chat_template.has_template

    def chat_prompt(self, messages: Sequence[ChatMessage | dict], add_generation_prompt: bool = True,
                    tools: Sequence[dict] | None = None) -> str:
        return self.chat_template.render(messages, add_generation_prompt, tools=tools)

    def encode_chat(self, messages: Sequence[ChatMessage | dict], add_generation_prompt: bool = True,
                    tools: Sequence[dict] | None = None) -> list[int]:
        """Prompt ids of rendered messages. Templates write their own BOS, so none is added."""
        return self.tokenizer.encode(self.chat_prompt(messages, add_generation_prompt, tools), add_bos=False)

    def warm_up(self, kv_cache_dtype: str = "float32") -> None:
        """Compile (or load from numba's cache) every kernel a request can reach, before serving,
        for a KV cache of this element type (each type is its own compiled decoder stack)."""
        kv = self.model.new_kv_cache(num_blocks=2, block_size=16, dtype=kv_cache_dtype)
        table = np.array([[0, 1]], np.int32)
        for n in (1, 5):        # the decode path and the batch (GEMM) path
            positions = np.arange(n, dtype=np.int32)
            batch = ForwardBatch(np.zeros(n, np.int32), positions, np.zeros(n, np.int32), table,
                                 positions.copy(), np.array([n - 1], np.int32))
            self.model.forward(batch, kv)

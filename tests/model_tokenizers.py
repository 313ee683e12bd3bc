"""The tokenizers of the catalogue's models and their references in tests/golden/<model>/.

Each tokenizer is built once per test session (Gemma 3's has 262k pieces); a test of a model that is
not installed skips, saying how to install it.
"""
from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import pytest

GOLDEN = Path(__file__).resolve().parent / "golden"
QWEN_MODELS = ("qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct")
MODELS = QWEN_MODELS + ("gemma-3-270m",)


def installed_model(name: str) -> Path | None:
    try:
        from engine.model_registry import installed_path
    except ImportError:
        folder = os.environ.get("MESHLLM_MODELS_DIR") or Path.home() / ".cache" / "meshllm" / "models"
        path = Path(folder).expanduser() / f"{name}.gguf"
        return path if path.is_file() else None
    return installed_path(name)


def reference(name: str) -> dict:
    return json.loads((GOLDEN / name / "tokenizer_reference.json").read_text(encoding="utf-8"))


@functools.cache
def _tokenizer(path: Path):
    from engine.gguf_file import GGUFFile
    from engine.tokenizer import Tokenizer
    return Tokenizer.from_gguf(GGUFFile.open(path))


def tokenizer(name: str):
    """The model's Tokenizer, or a skip when its file is not installed."""
    path = installed_model(name)
    if path is None:
        pytest.skip(f"model {name} is not installed (meshllm models install {name})")
    return _tokenizer(path)

"""Write tests/golden/<model>/tokenizer_reference.json: token ids and chat prompts from transformers
and llama.cpp, for the Qwen2.5-Coder and Gemma 3 GGUFs.

Run with the peers' environment (torch, transformers, llama-cpp-python; `make .venv-peers/.installed`):

    .venv-peers/bin/python tests/golden_tools/make_tokenizer_fixtures.py [MODEL ...]

Both references read the same GGUF: transformers builds its tokenizer from the file
(`AutoTokenizer.from_pretrained(folder, gguf_file=...)`), llama.cpp loads its vocabulary only.
Ids are without BOS, with special-token texts parsed (transformers `add_special_tokens=False`,
llama.cpp `add_bos=False, special=True`). Nothing is downloaded.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden"

# The same 20 strings for every model; the one None is that model's own special-token text.
TEXTS = [
    "The quick brown fox jumps over the lazy dog. It's 5 o'clock, isn't it?",
    "def add(a, b):\n    return a + b\n\n\tif x:\n\t\tpass  # tabs\n",
    "12345 3.14159 2026-12-02",
    "你好，世界。机器学习",
    "日本語のテキストです。カタカナとひらがな",
    "👍🏽🚀",
    "Café naïve Ångström façade Łódź",
    "   leading spaces",
    "trailing spaces   ",
    "multiple     spaces  between",
    "\n\n\n",
    "line one\nline two\r\n\r\nline three",
    None,
    "https://example.com/path?query=1&b=2#frag",
    "",
    "Pneumonoultramicroscopicsilicovolcanoconiosis",
    "𠜎𠜱𠝹 rare CJK",                                   # CJK Extension B: byte fallback in SentencePiece
    "bell\x07 esc\x1b nul\x00 del\x7f",                  # control characters
    "I'M HERE, YOU'RE THERE, we'll SEE",                 # contractions in capitals
    "Cafe\u0301 <b>bold</b> ∑ x² ≈ π",                   # a combining accent (not NFC-normalized)
]

QWEN_SPECIAL = "<|im_start|>user\n<tool_call>Hi</tool_call><|im_end|>\n<|endoftext|>"
GEMMA_SPECIAL = "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "The city, e.g. Zürich"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    },
}

CHATS = [
    {"name": "user", "messages": [{"role": "user", "content": "Write a Python function that reverses a string."}]},
    {"name": "system_user", "messages": [
        {"role": "system", "content": "You are a concise coding assistant."},
        {"role": "user", "content": "What does `git rebase -i` do?"}]},
    {"name": "multi_turn", "messages": [
        {"role": "user", "content": "Name a sorting algorithm."},
        {"role": "assistant", "content": "Merge sort."},
        {"role": "user", "content": "Its time complexity?"},
        {"role": "assistant", "content": "O(n log n) in every case."},
        {"role": "user", "content": "And its memory use?"}]},
    {"name": "tools", "tools": [WEATHER_TOOL], "messages": [
        {"role": "user", "content": "What's the weather in Paris, in celsius?"}]},
    {"name": "tool_call_round_trip", "tools": [WEATHER_TOOL], "messages": [
        {"role": "system", "content": "You help with travel plans."},
        {"role": "user", "content": "Is it warm in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "get_weather",
                                              "arguments": {"city": "Paris", "unit": "celsius"}}}]},
        {"role": "tool", "name": "get_weather",
         "content": json.dumps({"temperature": 24, "sky": "clear", "unit": "°C"}, ensure_ascii=False)},
        {"role": "user", "content": "Thanks!"}]},
]

MODELS = {
    "qwen2.5-coder-0.5b-instruct": QWEN_SPECIAL,
    "qwen2.5-coder-1.5b-instruct": QWEN_SPECIAL,
    "gemma-3-270m": GEMMA_SPECIAL,
}


def models_dir() -> Path:
    if os.environ.get("MESHLLM_MODELS_DIR"):
        return Path(os.environ["MESHLLM_MODELS_DIR"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "meshllm" / "models"


def llamacpp_eog_ids(llama) -> list[int]:
    import llama_cpp
    vocab = llama_cpp.llama_model_get_vocab(llama.model)
    return [i for i in range(llama.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, i)]


def reference(name: str, special_text: str) -> dict:
    import llama_cpp
    import transformers
    from transformers import AutoTokenizer

    path = models_dir() / f"{name}.gguf"
    hf = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    cpp = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)

    def cpp_ids(text):
        return cpp.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    cases, differ = [], []
    for text in (special_text if t is None else t for t in TEXTS):
        hf_ids = hf.encode(text, add_special_tokens=False)
        ll_ids = cpp_ids(text)
        cases.append({"text": text, "hf_ids": hf_ids, "llamacpp_ids": ll_ids})
        if hf_ids != ll_ids:
            differ.append(text)
    bos_text = TEXTS[0]
    chats = []
    if hf.chat_template:
        for chat in CHATS:
            kwargs = {"tools": chat["tools"]} if "tools" in chat else {}
            prompt = hf.apply_chat_template(chat["messages"], tokenize=False, add_generation_prompt=True, **kwargs)
            chats.append({**chat, "prompt_text": prompt,
                          "prompt_ids": hf.encode(prompt, add_special_tokens=False),
                          "llamacpp_prompt_ids": cpp_ids(prompt)})
    return {
        "model": name,
        "sources": {"transformers": transformers.__version__, "llama_cpp_python": llama_cpp.__version__},
        "vocab_size": len(hf),
        "bos_id": hf.bos_token_id, "eos_id": hf.eos_token_id,
        "llamacpp_eog_ids": llamacpp_eog_ids(cpp),
        "with_bos": {"text": bos_text, "hf_ids": hf.encode(bos_text),
                     "llamacpp_ids": cpp.tokenize(bos_text.encode(), add_bos=True, special=True)},
        "has_chat_template": bool(hf.chat_template),
        "tokenize_differences": differ,
        "tokenize": cases,
        "chat": chats,
    }


def write_compact(ref: dict, path: Path) -> None:
    """One case per line: diffs of a regenerated file stay readable, and the file stays small."""
    lines = ["{"]
    items = list(ref.items())
    for n, (key, value) in enumerate(items):
        comma = "," if n < len(items) - 1 else ""
        if key in ("tokenize", "chat") and value:
            body = ",\n".join("  " + json.dumps(v, ensure_ascii=False) for v in value)
            lines.append(f"{json.dumps(key)}: [\n{body}\n]{comma}")
        else:
            lines.append(f"{json.dumps(key)}: {json.dumps(value, ensure_ascii=False)}{comma}")
    lines.append("}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", default=list(MODELS), help=f"default: {' '.join(MODELS)}")
    args = parser.parse_args()
    for name in args.models:
        ref = reference(name, MODELS[name])
        out = GOLDEN / name / "tokenizer_reference.json"
        write_compact(ref, out)
        print(f"{out.relative_to(ROOT)}: {len(ref['tokenize'])} strings "
              f"({len(ref['tokenize_differences'])} where transformers and llama.cpp differ), "
              f"{len(ref['chat'])} chats", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

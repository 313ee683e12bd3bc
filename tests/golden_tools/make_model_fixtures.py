"""Write the model parity fixtures: tests/golden/<model>/{hf_reference,llamacpp_reference}.json.

Run with the peer environment (torch, transformers, llama-cpp-python: `make bench-peers` builds it):
    .venv-peers/bin/python tests/golden_tools/make_model_fixtures.py [MODEL ...]

For each model (installed with `meshllm models install NAME`), 8 prompts: chat prompts rendered
with the GGUF's template by transformers (none for a base model without one) and plain prompts,
one of them longer than Gemma 3's 512-token sliding window. For each prompt, transformers (fp32,
weights dequantized from the GGUF by its GGUF loader) gives the prompt ids, the last position's
top-20 logits and the greedy continuation (48 tokens or up to an end-of-generation token);
llama.cpp gives the same from the same prompt ids. The tests read only the JSON.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
MODELS_DIR = Path(os.environ.get("MESHLLM_MODELS_DIR") or Path(os.environ.get("XDG_CACHE_HOME")
                  or Path.home() / ".cache") / "meshllm" / "models")
MODELS = ("qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct", "gemma-3-270m")
GREEDY_TOKENS = 48
THREADS = 2

CHAT = [
    [{"role": "user", "content": "What happens to assert statements when Python runs with optimization turned on?"}],
    [{"role": "system", "content": "You are a concise assistant. Answer in one sentence."},
     {"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Write a Python function that returns the n-th Fibonacci number."}],
    [{"role": "user", "content": "Translate to French: 'The weather is nice today.'"},
     {"role": "assistant", "content": "Il fait beau aujourd'hui."},
     {"role": "user", "content": "And to German?"}],
]


def long_passage() -> str:
    """About 700 tokens of CPython's reference text (stdlib, present wherever Python is)."""
    from pydoc_data.topics import topics
    text = topics["assert"] + "\n" + topics["for"]
    return text[:3000] + "\n\nQuestion: what does the assert statement do when optimization is requested?\nAnswer:"


RAW = [
    "The capital of France is",
    "def quicksort(arr):\n    ",
    "Once upon a time, in a small village by the sea,",
    None,                                           # the long passage
]
RAW_BASE_MODEL_EXTRA = [
    "The three primary colors are",
    "import numpy as np\n\n# compute the mean of each column\n",
    "Water boils at a temperature of",
    "1, 1, 2, 3, 5, 8, 13,",
]


def top20(logits: np.ndarray) -> list:
    order = np.argsort(-logits)[:20]
    return [[int(i), float(logits[i])] for i in order]


class Transformers:
    def __init__(self, path: Path):
        from transformers import AutoModelForCausalLM, AutoTokenizer
        self.tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        self.model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                          dtype=torch.float32).eval()
        self.config = self.model.config

    @torch.no_grad()
    def run(self, ids: list[int], end_ids: set[int]) -> dict:
        out = self.model(torch.tensor([ids]), use_cache=True)
        logits = out.logits[0, -1].numpy()
        first = top20(logits)
        past, tokens = out.past_key_values, []
        token = int(np.argmax(logits))
        while True:
            tokens.append(token)
            if token in end_ids or len(tokens) == GREEDY_TOKENS:
                break
            out = self.model(torch.tensor([[token]]), past_key_values=past, use_cache=True)
            past = out.past_key_values
            token = int(torch.argmax(out.logits[0, -1]))
        return {"last_logits_top20": first, "greedy_48": tokens,
                "greedy_text": self.tokenizer.decode(tokens)}


class LlamaCpp:
    def __init__(self, path: Path):
        from llama_cpp import Llama
        self.llm = Llama(model_path=str(path), n_ctx=2048, n_threads=THREADS, n_batch=512, verbose=False)

    def last_logits(self) -> np.ndarray:
        """The last evaluated token's logits (without logits_all, llama-cpp-python keeps no scores)."""
        return np.ctypeslib.as_array(self.llm._ctx.get_logits(), shape=(self.llm.n_vocab(),)).astype(np.float32)

    def run(self, ids: list[int], end_ids: set[int]) -> dict:
        self.llm.reset()
        self.llm.eval(ids)
        logits = self.last_logits()
        first = top20(logits)
        tokens = []
        token = int(np.argmax(logits))
        while True:
            tokens.append(token)
            if token in end_ids or len(tokens) == GREEDY_TOKENS:
                break
            self.llm.eval([token])
            token = int(np.argmax(self.last_logits()))
        return {"last_logits_top20": first, "greedy_48": tokens}


def end_of_generation_ids(tokenizer) -> set[int]:
    vocab = tokenizer.get_vocab()
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    ids |= {vocab[t] for t in ("<|im_end|>", "<|endoftext|>", "<end_of_turn>", "<eos>") if t in vocab}
    return ids


def make(name: str) -> None:
    import llama_cpp
    import transformers
    path = MODELS_DIR / f"{name}.gguf"
    if not path.is_file():
        sys.exit(f"{path} is missing: meshllm models install {name}")
    torch.set_num_threads(THREADS)
    hf = Transformers(path)
    tok = hf.tokenizer
    end_ids = end_of_generation_ids(tok)
    has_template = bool(getattr(tok, "chat_template", None))
    cases = {"chat": [], "raw": []}
    if has_template:
        for messages in CHAT:
            text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            ids = tok(text, add_special_tokens=False)["input_ids"]
            cases["chat"].append({"messages": messages, "prompt_text": text, "prompt_ids": ids})
    raws = RAW + ([] if has_template else RAW_BASE_MODEL_EXTRA)
    for text in raws:
        text = long_passage() if text is None else text
        ids = tok(text)["input_ids"]                # the model's own BOS rule (Gemma adds <bos>)
        cases["raw"].append({"prompt_text": text, "prompt_ids": ids})
    long_ids = max(len(c["prompt_ids"]) for c in cases["raw"])
    print(f"{name}: {len(cases['chat'])} chat + {len(cases['raw'])} raw prompts, longest {long_ids} tokens",
          file=sys.stderr)

    hf_ref = {"model": path.name, "source": f"transformers {transformers.__version__}, torch {torch.__version__}, "
              "fp32 weights dequantized from the GGUF by transformers' GGUF loader",
              "end_of_generation_ids": sorted(end_ids), "chat": [], "raw": []}
    for kind, items in cases.items():
        for case in items:
            hf_ref[kind].append(case | hf.run(case["prompt_ids"], end_ids))
            print(f"  transformers {kind}: {hf_ref[kind][-1]['greedy_text'][:60]!r}", file=sys.stderr)
    del hf
    cpp = LlamaCpp(path)
    cpp_ref = {"model": path.name, "source": f"llama.cpp via llama-cpp-python {llama_cpp.__version__} (CPU)",
               "chat": [], "raw": []}
    for kind, items in cases.items():
        for case in items:
            cpp_ref[kind].append({"prompt_ids": case["prompt_ids"]} | cpp.run(case["prompt_ids"], end_ids))
    out = GOLDEN / name
    out.mkdir(parents=True, exist_ok=True)
    (out / "hf_reference.json").write_text(json.dumps(hf_ref, ensure_ascii=False, indent=1))
    (out / "llamacpp_reference.json").write_text(json.dumps(cpp_ref, ensure_ascii=False, indent=1))
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    for model_name in sys.argv[1:] or MODELS:
        make(model_name)

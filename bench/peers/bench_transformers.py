"""Peer benchmark: transformers (PyTorch CPU, fp32 weights dequantized from a GGUF). Prints JSON.
Run with .venv-peers (bench/bench_engine.py --peers does):
    python bench/peers/bench_transformers.py GGUF [threads]

The same measurement as ../shared/tools/bench_hf.py (which is fixed to SmolLM2's file name), for
any GGUF transformers can load: prefill of the 512 random ids (seed 0), then 128 greedy decode
steps with the KV cache after a 16-token prompt; medians of 3.
"""
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM

path = Path(sys.argv[1])
threads = int(sys.argv[2]) if len(sys.argv) > 2 else 2
torch.set_num_threads(threads)
model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
random.seed(0)
prompt = torch.tensor([[random.randint(100, 40000) for _ in range(512)]])
result = {}
with torch.no_grad():
    for _ in range(3):
        t0 = time.perf_counter()
        model(prompt)
        result.setdefault("prefill512_tok_s", []).append(512 / (time.perf_counter() - t0))
        out = model(prompt[:, :16], use_cache=True)
        past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
        t0 = time.perf_counter()
        for _ in range(128):
            out = model(token, past_key_values=past, use_cache=True)
            past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
        result.setdefault("decode128_tok_s", []).append(128 / (time.perf_counter() - t0))
summary = {k: round(float(np.median(v)), 1) for k, v in result.items()}
print(json.dumps(summary | {"threads": threads, "engine": "transformers"}))

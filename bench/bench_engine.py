"""Engine benchmark: prefill and decode speed, start-up to first token, peak memory. Prints JSON.

    python bench/bench_engine.py [--model PATH] [--threads 2] [--peers] [--repeats 3]

Prefill: a 512-token prompt (the peers' prompt: random ids, seed 0) in one forward.
Decode: 128 greedy tokens after a 16-token prompt, one forward per token, in the exact mode
(float32 activations, the default) and the fast mode (int8 activations, `--fast`).
First token: wall time from starting `meshllm generate --max-tokens 1` to its first output byte,
with an empty numba cache (cold: compiles every kernel) and then with the cache it left (warm).
--peers runs llama.cpp (../shared/tools/bench_llamacpp.py) and transformers (bench/peers/) on the
same GGUF and prompt in this run, with the interpreter in .venv-peers (make bench-peers builds it),
and prints our ratio to each. --model takes a catalogue name or a path (default: SmolLM2, the
model the reference numbers in DESIGN.md are for).
Decode ceiling: one decoded token reads every weight once (the embedding table aside: one row of
it; it is read whole where it is also the output head), so `membw` GB/s over those bytes is the
tokens/s that memory bandwidth allows; `*_share_of_ceiling` is each engine's decode rate over it.
`membw_read_GB_s` is the higher of two probes over a buffer that size, both printed:
../shared/tools/membw.py and NumPy sums on `--threads` threads (membw.py's loop is not vectorised on
every CPU, so alone it can put the ceiling below what decode already streams).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SHARED_TOOLS = ROOT.parent / "shared" / "tools"


def cpu_name() -> str:
    """The CPU's model name, family/model and the vector ISAs our kernels care about, e.g.
    "AMD EPYC, family 26 model 2 (avx2 avx512f avx512_vnni avx512_bf16)": cloud CPUs often hide
    their generation behind a generic name (family 25 is Zen 3/4, 26 Zen 5; Intel's is 6), and
    the ISA says which kernels ran."""
    name, flags, fields = "unknown", set(), {}
    try:
        for line in open("/proc/cpuinfo"):
            key, _, value = line.partition(":")
            key, value = key.strip(), value.strip()
            if key == "model name" and name == "unknown":
                name = value
            elif key in ("cpu family", "model") and key not in fields:
                fields[key] = value
            elif key == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    if fields.keys() == {"cpu family", "model"}:
        name = f"{name}, family {fields['cpu family']} model {fields['model']}"
    isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8") if f in flags]
    return f"{name} ({' '.join(isa)})" if isa else name


def peer_prompt(n: int) -> list[int]:
    random.seed(0)
    return [random.randint(100, 40000) for _ in range(n)]


def measure_engine(model_path: str | None, threads: int, repeats: int) -> dict:
    from engine.runtime import configure
    configure(threads)
    from engine.llm import LLM
    from engine.model import ForwardBatch

    llm = LLM.load(model_path)
    llm.warm_up()
    llm.model.int8_activations = True
    llm.warm_up()
    model = llm.model
    prompt = peer_prompt(512)
    kv = model.new_kv_cache(num_blocks=(512 + 128 + 16) // 16 + 1, block_size=16)
    table = np.arange(kv.num_blocks, dtype=np.int32).reshape(1, -1)

    def forward(ids, start):
        n = len(ids)
        pos = np.arange(start, start + n, dtype=np.int32)
        return model.forward(ForwardBatch(np.array(ids, np.int32), pos, np.zeros(n, np.int32), table,
                                          pos.copy(), np.array([n - 1], np.int32)), kv)[0]

    def decode_rate():
        logits = forward(prompt[:16], 0)
        t0 = time.perf_counter()
        for i in range(128):
            logits = forward([int(np.argmax(logits))], 16 + i)
        return 128 / (time.perf_counter() - t0)

    prefill, decode, decode_fast = [], [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        forward(prompt, 0)
        prefill.append(512 / (time.perf_counter() - t0))
        model.int8_activations = False
        decode.append(decode_rate())
        model.int8_activations = True
        decode_fast.append(decode_rate())
    model.int8_activations = False
    return {
        "prefill512_tok_s": round(float(np.median(prefill)), 1),
        "decode128_tok_s": round(float(np.median(decode)), 1),
        "decode128_tok_s_fast": round(float(np.median(decode_fast)), 1),
        "peak_rss_MB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def first_token_seconds(model_path: str | None, threads: int, cache_dir: str) -> float:
    """Wall time from process start to the first byte `meshllm generate` prints."""
    cmd = [sys.executable, "-m", "services.cli", "generate", "--max-tokens", "1", "--temperature", "0",
           "--threads", str(threads), "The capital of France is"]
    if model_path:
        cmd[4:4] = ["--model", model_path]
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env, cwd=ROOT)
    proc.stdout.read(1)
    elapsed = time.perf_counter() - t0
    proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"{cmd} exited {proc.returncode}")
    return round(elapsed, 2)


def membw_tool_gb_s(buffer_mb: int, threads: int) -> float | None:
    """../shared/tools/membw.py's best read GB/s over a buffer_mb buffer with `threads` threads."""
    script = SHARED_TOOLS / "membw.py"
    if not script.exists():
        return None
    env = os.environ | {"NUMBA_NUM_THREADS": str(threads)}
    out = subprocess.run([sys.executable, str(script), str(buffer_mb)], capture_output=True, text=True, env=env,
                         check=True).stdout
    return float(json.loads(out.strip().splitlines()[-1])["read_GB_s_best"])


def numpy_read_gb_s(buffer_mb: int, threads: int, repeats: int = 20) -> float:
    """Best read GB/s of `threads` Python threads each summing its share of one buffer with NumPy (which
    releases the GIL): a second probe beside membw.py, whose one-accumulator numba loop the compiler does
    not vectorise on every CPU (7-9 GB/s on a Zen 5 EPYC where this reads 28-41 and decode streams 19)."""
    from concurrent.futures import ThreadPoolExecutor
    buffer = np.ones(buffer_mb * 2**20 // 4, np.float32)
    parts = np.array_split(buffer, threads)
    best = 0.0
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(repeats):
            t0 = time.perf_counter()
            list(pool.map(np.sum, parts))
            best = max(best, buffer.nbytes / (time.perf_counter() - t0) / 1e9)
    return round(best, 1)


def read_bandwidth(buffer_mb: int, threads: int) -> dict:
    """Both read-bandwidth probes and the higher of them (`membw_read_GB_s`, what the decode ceiling uses:
    a probe can read low, never high)."""
    probes = {"membw_tool_GB_s": membw_tool_gb_s(buffer_mb, threads),
              "membw_numpy_GB_s": numpy_read_gb_s(buffer_mb, threads)}
    return probes | {"membw_read_GB_s": max(v for v in probes.values() if v is not None)}


def run_peer(script: Path, gguf: str, threads: int) -> dict:
    """A peer benchmark script in .venv-peers; its JSON plus its process's peak RSS."""
    python = ROOT / ".venv-peers" / "bin" / "python"
    if not python.exists():
        return {"error": "no .venv-peers: run `make bench-peers`"}
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        proc = subprocess.Popen([str(python), str(script), gguf, str(threads)], stdout=stdout, stderr=stderr, text=True)
        _, status, usage = os.wait4(proc.pid, 0)        # this child's own rusage, not the max over children
        proc.returncode = os.waitstatus_to_exitcode(status)
        stdout.seek(0)
        stderr.seek(0)
        out, err = stdout.read(), stderr.read().strip()
    if proc.returncode:
        return {"error": err.splitlines()[-1] if err else f"exit {proc.returncode}"}
    return json.loads(out.strip().splitlines()[-1]) | {"peak_rss_MB": round(usage.ru_maxrss / 1024, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct", help="catalogue name or GGUF path")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--peers", action="store_true")
    ap.add_argument("--skip-startup", action="store_true", help="skip the first-token subprocess runs")
    args = ap.parse_args()

    result = {"engine": "meshllm", "model": args.model, "cpu": cpu_name(), "threads": args.threads}
    if not args.skip_startup:
        with tempfile.TemporaryDirectory() as cache:
            result["first_token_s_cold_cache"] = first_token_seconds(args.model, args.threads, cache)
            result["first_token_s_warm_cache"] = first_token_seconds(args.model, args.threads, cache)
    from engine.gguf_file import GGUFFile
    from engine.model_registry import resolve_model
    gguf = str(resolve_model(args.model))              # the file measure_engine loads: a name, a path or the default
    weight_bytes = GGUFFile.open(gguf).decode_weight_bytes()
    # before this process starts kernel threads: once they have run, they spin a while between calls
    probes = read_bandwidth(max(1, round(weight_bytes / 2**20)), args.threads)
    bandwidth = probes["membw_read_GB_s"]
    result.update(measure_engine(args.model, args.threads, args.repeats))
    result["decode_weights_read_MB"] = round(weight_bytes / 1e6, 1)
    result.update(probes)
    ceiling = bandwidth * 1e9 / weight_bytes
    result["decode_ceiling_tok_s"] = round(ceiling, 1)
    for key in ("decode128_tok_s", "decode128_tok_s_fast"):
        result[f"{key}_share_of_ceiling"] = round(result[key] / ceiling, 2)
    if args.peers:
        peers = {
            "llama.cpp": run_peer(SHARED_TOOLS / "bench_llamacpp.py", gguf, args.threads),
            "transformers": run_peer(ROOT / "bench" / "peers" / "bench_transformers.py", gguf, args.threads),
        }
        result["peers"] = peers
        for name, peer in peers.items():
            for key, peer_key in (("prefill512_tok_s", "prefill512_tok_s"), ("decode128_tok_s", "decode128_tok_s"),
                                  ("decode128_tok_s_fast", "decode128_tok_s")):
                if peer_key in peer:
                    result[f"{key}_ratio_vs_{name}"] = round(result[key] / peer[peer_key], 2)
            if "decode128_tok_s" in peer:
                peer["decode128_tok_s_share_of_ceiling"] = round(peer["decode128_tok_s"] / ceiling, 2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

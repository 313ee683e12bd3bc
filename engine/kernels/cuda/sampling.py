"""Choosing the next token on the device (CUDA): greedy, temperature and top-k draws, with the
chosen token's log-probability, so a decode step copies only token ids and logprobs back.

    sample(logits (R, V) f32, temperatures (R,) f32|f64, top_ks (R,) i32, uniforms (R,) f64,
           token_ids (R,) i32 out, logprobs (R,) f32 out)

One block per row. The semantics are engine.sampling's:
- temperature 0 or top_k 1: argmax (ties to the smallest id, as np.argmax);
- otherwise a draw from softmax(logits / temperature), restricted to top_k when 0 < top_k < V,
  by inverse CDF in vocabulary order with the row's uniform in [0, 1): the first token whose
  cumulative weight reaches uniform * total. Without top-k this is exactly sample_from's
  full-vocabulary draw (the same uniform gives the same token, up to float rounding at a
  boundary). With top-k every token tied with the k-th largest logit stays in the pool;
- logprobs: log_softmax of the raw logits at the chosen token (as logprobs_of).
Top-p, min-p and penalties stay on the host sampler.
"""
import math

import numpy as np
from numba import cuda, float32, float64, int32

from .launch import ROW_THREADS
from .reduce import block_argmax, block_max, block_sum, smaller

_f32 = np.float32
_f64 = np.float64


@cuda.jit(device=True, inline=True)
def _count_at_least(buf, row, threshold):
    count = _f32(0.0)
    for i in range(cuda.threadIdx.x, row.shape[0], cuda.blockDim.x):
        if row[i] >= threshold:
            count += _f32(1.0)
    return block_sum(buf, count)


@cuda.jit
def _sample_kernel(logits, temperatures, top_ks, uniforms, token_ids, logprobs):
    r = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    row = logits[r]
    V = row.shape[0]
    vals = cuda.shared.array(ROW_THREADS, float32)
    ids = cuda.shared.array(ROW_THREADS, int32)
    sums = cuda.shared.array(ROW_THREADS, float64)
    chosen_s = cuda.shared.array(1, int32)

    best = _f32(-math.inf)
    best_id = V
    low = _f32(math.inf)
    for i in range(tid, V, nt):
        if row[i] > best:
            best = row[i]
            best_id = i
        low = smaller(low, row[i])
    top, argmax = block_argmax(vals, ids, best, best_id)
    low = -block_max(vals, -low)
    z = _f64(0.0)
    for i in range(tid, V, nt):
        z += math.exp(_f64(row[i]) - _f64(top))
    log_z = _f64(top) + math.log(block_sum(sums, z))

    temperature = temperatures[r]
    k = top_ks[r]
    chosen = argmax
    if temperature > 0 and k != 1:
        threshold = low                                   # keep every token ...
        if 0 < k < V:                                     # ... or the k largest: bisect for the k-th value
            lo = low
            hi = top
            for _ in range(40):
                mid = lo + (hi - lo) * _f32(0.5)
                if _count_at_least(vals, row, mid) >= k:
                    lo = mid
                else:
                    hi = mid
            smallest = _f32(math.inf)                     # the smallest logit >= lo: the k-th largest
            for i in range(tid, V, nt):
                if row[i] >= lo:
                    smallest = smaller(smallest, row[i])
            threshold = -block_max(vals, -smallest)
        # contiguous chunks per thread, so that a prefix over threads is a prefix over the vocabulary
        chunk = (V + nt - 1) // nt
        begin = smaller(tid * chunk, V)
        end = smaller(begin + chunk, V)
        mine = _f64(0.0)
        for i in range(begin, end):
            if row[i] >= threshold:
                mine += math.exp((_f64(row[i]) - _f64(top)) / _f64(temperature))
        sums[tid] = mine
        if tid == 0:
            chosen_s[0] = V                               # atomic.min below: the first token reaching it
        cuda.syncthreads()
        total = _f64(0.0)
        before = _f64(0.0)
        for j in range(nt):
            if j == tid:
                before = total
            total += sums[j]
        target = uniforms[r] * total
        if mine > 0 and before <= target <= before + mine:
            running = before
            for i in range(begin, end):
                if row[i] >= threshold:
                    running += math.exp((_f64(row[i]) - _f64(top)) / _f64(temperature))
                    if running >= target:
                        cuda.atomic.min(chosen_s, 0, i)
                        break
        cuda.syncthreads()
        if chosen_s[0] < V:                               # else rounding left the target unreached
            chosen = chosen_s[0]
    if tid == 0:
        token_ids[r] = chosen
        logprobs[r] = _f64(row[chosen]) - log_z


def sample(logits, temperatures, top_ks, uniforms, token_ids, logprobs):
    """token_ids (R,) i32, logprobs (R,) f32 of draws from logits (R, V) f32 (see the module doc)."""
    if logits.shape[0]:
        _sample_kernel[logits.shape[0], ROW_THREADS](logits, temperatures, top_ks, uniforms, token_ids, logprobs)


def greedy(logits, token_ids, logprobs):
    """Argmax (R,) i32 of logits (R, V) and its log-probability (R,) f32."""
    R = logits.shape[0]
    sample(logits, cuda.to_device(np.zeros(R, np.float32)), cuda.to_device(np.ones(R, np.int32)),
           cuda.to_device(np.zeros(R, np.float64)), token_ids, logprobs)

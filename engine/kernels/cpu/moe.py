"""Mixture-of-Experts FFN (CPU, numba): each token goes through k of E experts, and each expert runs
once per step over every token routed to it, whichever sequence of the batch the token belongs to,
so an expert's weights are read once per step rather than once per token.

    route(logits (T, E) f32, k, normalize, scale, expert_ids (T, k) i32, expert_weights (T, k) f32)
        p = softmax(logits); the k experts of largest p (ties: the lower id), in descending order;
        weight p_e, or p_e / (sum of the k p) when normalize; times scale
    group_by_expert(expert_ids (T, k) i32, num_experts, offsets (E+1,) i64, entries (T*k,) i64)
        a counting sort: entries[offsets[e]:offsets[e+1]] are the flat slots t*k + j with
        expert_ids[t, j] == e, in token order
    moe_ffn(h (T, D) f32, int8_activations, router (E, .) u8, router_type,
            gate_exps (E*F, .) u8, gate_type, up_exps (E*F, .) u8, up_type, down_exps (E*D, .) u8, down_type,
            k, normalize, scale, gelu, out (T, D) f32, expert_tokens (E,) i64)
        out[t] = sum over t's k experts e, in ascending e, of weight_te * ffn_e(h[t]);
        expert_tokens[e] += the number of tokens routed to e.
        Expert e's matrices are rows e*F:(e+1)*F of gate_exps / up_exps and e*D:(e+1)*D of
        down_exps: llama.cpp's 3-D tensors {D, F, E} and {F, D, E}, the expert index slowest, so
        each expert's slice is an ordinary quantized matrix and the dense kernels run on it.
    shared_expert_add(h (T, D) f32, int8_activations, w_gate, gate_type, w_up, up_type, w_down, down_type,
                      gate_inp (1, .) u8, gate_inp_type, gelu, gate (T, Fs), up (T, Fs), scratch (T, D), out (T, D))
        out += sigmoid(h . gate_inp) * ffn_shared(h)        (Qwen2-MoE)

The router (and the shared expert's gate) runs in float32 whatever int8_activations says: it
chooses experts, where a flipped choice costs far more accuracy than int8 saves time on E rows.
A token's result depends only on the token: its experts are added in expert order and every
kernel computes each token's row on its own; the batch changes it only through the number of tokens
an expert gets, which picks project()'s path (row dots under 4 tokens, tiles from 4), a rounding
difference of ~1e-7 relative, as in the dense FFN.
"""
import numpy as np
from numba import njit

from .matmul import matmul
from .projections import gated_ffn


@njit(cache=True, nogil=True)
def route(logits, k, normalize, scale, expert_ids, expert_weights):
    T, E = logits.shape
    p = np.empty(E, np.float64)
    taken = np.empty(E, np.bool_)
    for t in range(T):
        row = logits[t]
        top = row.max()
        total = 0.0
        for e in range(E):
            p[e] = np.exp(np.float64(row[e]) - top)
            total += p[e]
        taken[:] = False
        chosen = 0.0
        for j in range(k):          # selection on the logits: the order softmax keeps, without its rounding
            best = -1
            for e in range(E):
                if not taken[e] and (best < 0 or row[e] > row[best]):
                    best = e
            taken[best] = True
            expert_ids[t, j] = best
            chosen += p[best]
        denominator = chosen if normalize else total
        for j in range(k):
            expert_weights[t, j] = np.float32(p[expert_ids[t, j]] / denominator * scale)


@njit(cache=True, nogil=True)
def group_by_expert(expert_ids, num_experts, offsets, entries):
    T, k = expert_ids.shape
    offsets[:] = 0
    for t in range(T):
        for j in range(k):
            offsets[expert_ids[t, j] + 1] += 1
    for e in range(num_experts):
        offsets[e + 1] += offsets[e]
    fill = offsets[:num_experts].copy()
    for t in range(T):
        for j in range(k):
            e = expert_ids[t, j]
            entries[fill[e]] = t * k + j
            fill[e] += 1


@njit(cache=True, nogil=True)
def moe_ffn(h, int8_activations, router, router_type, gate_exps, gate_type, up_exps, up_type, down_exps, down_type,
            k, normalize, scale, gelu, out, expert_tokens):
    T, D = h.shape
    E = router.shape[0]
    F = gate_exps.shape[0] // E
    logits = np.empty((T, E), np.float32)
    matmul(router, router_type, h, logits, False)
    expert_ids = np.empty((T, k), np.int32)
    weights = np.empty((T, k), np.float32)
    route(logits, k, normalize, scale, expert_ids, weights)
    offsets = np.empty(E + 1, np.int64)
    entries = np.empty(T * k, np.int64)
    group_by_expert(expert_ids, E, offsets, entries)
    # a token picks k distinct experts, so no expert gets more than T rows
    xe = np.empty((T, D), np.float32)
    gate = np.empty((T, F), np.float32)
    up = np.empty((T, F), np.float32)
    ye = np.empty((T, D), np.float32)
    out[:] = 0.0
    for e in range(E):
        first = offsets[e]
        n = offsets[e + 1] - first
        expert_tokens[e] += n
        if n == 0:
            continue
        for i in range(n):                      # gather: the expert's tokens, (n, D)
            xe[i] = h[entries[first + i] // k]
        gated_ffn(xe[:n], int8_activations, gate_exps[e * F:(e + 1) * F], gate_type, up_exps[e * F:(e + 1) * F],
                  up_type, down_exps[e * D:(e + 1) * D], down_type, gelu, gate[:n], up[:n], ye[:n])
        for i in range(n):                      # scatter: weighted, into each token's row
            slot = entries[first + i]
            t = slot // k
            w = weights[t, slot % k]
            for d in range(D):
                out[t, d] += w * ye[i, d]


@njit(cache=True, nogil=True)
def shared_expert_add(h, int8_activations, w_gate, gate_type, w_up, up_type, w_down, down_type, gate_inp,
                      gate_inp_type, gelu, gate, up, scratch, out):
    T, D = h.shape
    gated_ffn(h, int8_activations, w_gate, gate_type, w_up, up_type, w_down, down_type, gelu, gate, up, scratch)
    logit = np.empty((T, 1), np.float32)
    matmul(gate_inp, gate_inp_type, h, logit, False)
    for t in range(T):
        g = np.float32(1.0) / (np.float32(1.0) + np.exp(-logit[t, 0]))
        for d in range(D):
            out[t, d] += g * scratch[t, d]

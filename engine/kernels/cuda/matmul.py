"""Matrix products with weights kept in their GGML blocks on the device (CUDA).

    matmul(w, ggml_type, x, out, int8_activations)
        out (T, N) f32 = x (T, K) f32 @ W^T,  W = w (N, row_bytes) u8 in GGML type ggml_type
    matmul_add(w, ggml_type, x, out)
        out (T, N) += x @ W^T      (the residual connections: saves an add kernel per use)

A block computes MATMUL_ROWS output rows for up to TOKENS_PER_PASS tokens: each row is one warp
of MATMUL_LANES lanes, lane l reading weights l, l+lanes, ... of the row (neighbouring lanes read
neighbouring bytes of one GGML block, and neighbouring activations) and decoding each weight once
for all the tokens of the pass. The lanes' partial sums meet in shared memory, one barrier, and
lanes then add up one token each. Decode (T = 1) gets a kernel built for one token per pass, so
no work is spent on tokens that are not there.

int8_activations is accepted for the CPU signature and ignored: the GPU path is float32 only.
"""
from numba import cuda, float32

from .dequant import weight_at
from .launch import MATMUL_LANES, MATMUL_MAX_BLOCKS, MATMUL_ROWS, cdiv
from .reduce import smaller

TOKENS_PER_PASS = 8
_kernels = {}


def _build(ggml_type, tokens_per_pass, accumulate):
    tpp = tokens_per_pass

    @cuda.jit
    def kernel(w, x, out):
        lane = cuda.threadIdx.x
        lanes = cuda.blockDim.x
        r = cuda.threadIdx.y
        rows_per_block = cuda.blockDim.y
        t0 = cuda.blockIdx.y * tpp
        N = w.shape[0]
        T = x.shape[0]
        K = x.shape[1]
        partial = cuda.shared.array((MATMUL_ROWS, MATMUL_LANES, tpp), float32)
        acc = cuda.local.array(tpp, float32)
        # grid-stride over row groups (one turn on a GPU; many under the simulator's short grids)
        for base in range(cuda.blockIdx.x * rows_per_block, N, cuda.gridDim.x * rows_per_block):
            n = base + r
            for i in range(tpp):
                acc[i] = 0.0
            if n < N:
                row = w[n]
                for k in range(lane, K, lanes):
                    wk = weight_at(row, ggml_type, k)
                    for i in range(tpp):
                        # past the last token: re-read the last row (cheap) rather than branch
                        acc[i] += wk * x[smaller(t0 + i, T - 1), k]
            for i in range(tpp):
                partial[r, lane, i] = acc[i]
            cuda.syncthreads()
            if n < N:
                for i in range(lane, smaller(tpp, T - t0), lanes):
                    total = float32(0.0)
                    for j in range(lanes):
                        total += partial[r, j, i]
                    if accumulate:
                        out[t0 + i, n] += total
                    else:
                        out[t0 + i, n] = total
            cuda.syncthreads()                     # partial is rewritten by the next row group

    return kernel


def _kernel(ggml_type, tokens, accumulate):
    tpp = 1 if tokens == 1 else TOKENS_PER_PASS
    key = (int(ggml_type), tpp, accumulate)
    if key not in _kernels:
        _kernels[key] = _build(*key)
    return _kernels[key], tpp


def _launch(w, ggml_type, x, out, accumulate):
    T = x.shape[0]
    kernel, tpp = _kernel(ggml_type, T, accumulate)
    grid = (min(cdiv(w.shape[0], MATMUL_ROWS), MATMUL_MAX_BLOCKS), cdiv(T, tpp))
    kernel[grid, (MATMUL_LANES, MATMUL_ROWS)](w, x, out)


def matmul(w, ggml_type, x, out, int8_activations=False):
    """out (T, N) f32 = x (T, K) f32 @ W^T for W = w (N, row_bytes) u8 in GGML type ggml_type."""
    _launch(w, ggml_type, x, out, False)


def matmul_add(w, ggml_type, x, out):
    """out (T, N) f32 += x (T, K) f32 @ W^T."""
    _launch(w, ggml_type, x, out, True)

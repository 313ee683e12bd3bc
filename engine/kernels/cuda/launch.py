"""Launch shapes: threads per block and grid sizes for every kernel family.

Real GPUs get warp-sized lanes and a few hundred threads per block. Under the CUDA simulator every
thread is a Python thread (and a barrier a round of thread switches), so the same kernels run with
narrow blocks and short grids there: the code paths are the same, the loops just take more turns.
"""
from __future__ import annotations

from numba import config

SIMULATED = bool(config.ENABLE_CUDASIM)

# matmul: a block is MATMUL_ROWS output rows x MATMUL_LANES lanes splitting the K dimension
MATMUL_LANES = 2 if SIMULATED else 32
MATMUL_ROWS = 16 if SIMULATED else 4
MATMUL_MAX_BLOCKS = 2 if SIMULATED else 65535    # along the rows; more rows loop
# one block per row of a row-wise reduction (RMSNorm, argmax, softmax sums); a power of two
ROW_THREADS = 8 if SIMULATED else 256
# element-wise kernels loop over their elements grid-stride
ELEMENTWISE_THREADS = 16 if SIMULATED else 256
ELEMENTWISE_MAX_BLOCKS = 2 if SIMULATED else 4096
# attention: head_dim is at most MAX_HEAD_DIM (shared-memory tiles are sized for it)
MAX_HEAD_DIM = 128
ATTENTION_THREADS = 16 if SIMULATED else 128
PREFILL_QUERY_TILE = 4 if SIMULATED else 16      # queries of one sequence per block
KEY_TILE = 16                                    # keys per tile: block_size is a multiple of 16


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def elementwise_grid(n: int) -> tuple[int, int]:
    """(blocks, threads) for a grid-stride loop over n elements."""
    return max(1, min(cdiv(n, ELEMENTWISE_THREADS), ELEMENTWISE_MAX_BLOCKS)), ELEMENTWISE_THREADS


def device_helper(fn):
    """A device function that uses no `cuda.*` intrinsics: compiled inline for the GPU, and under the
    simulator left a plain Python function (a simulated device call swaps module globals on every
    call, which made weight decoding the simulator's bottleneck)."""
    if SIMULATED:
        return fn
    from numba import cuda
    return cuda.jit(device=True, inline=True)(fn)

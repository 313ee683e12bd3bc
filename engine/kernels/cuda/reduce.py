"""Block-wide reductions through shared memory (CUDA device functions).

Every thread of the block calls them with its value and gets the block's result; `buf` is a
shared float32 array of at least blockDim.x entries (blockDim.x a power of two). A tree of
barriers rather than warp shuffles: the CUDA simulator the tests run under has no shuffles.
"""
from numba import cuda

from .launch import device_helper


# numba 0.68's CUDA target fails to compile the builtin min/max on two scalars (its generic
# overload is typed with the wrong arity), so device code uses these.
@device_helper
def smaller(a, b):
    return a if a < b else b


@device_helper
def larger(a, b):
    return a if a > b else b


@cuda.jit(device=True, inline=True)
def block_sum(buf, value):
    tid = cuda.threadIdx.x
    buf[tid] = value
    cuda.syncthreads()
    step = cuda.blockDim.x // 2
    while step > 0:
        if tid < step:
            buf[tid] += buf[tid + step]
        cuda.syncthreads()
        step //= 2
    total = buf[0]
    cuda.syncthreads()                   # buf may be reused as soon as this returns
    return total


@cuda.jit(device=True, inline=True)
def block_max(buf, value):
    tid = cuda.threadIdx.x
    buf[tid] = value
    cuda.syncthreads()
    step = cuda.blockDim.x // 2
    while step > 0:
        if tid < step:
            buf[tid] = larger(buf[tid], buf[tid + step])
        cuda.syncthreads()
        step //= 2
    best = buf[0]
    cuda.syncthreads()
    return best


@cuda.jit(device=True, inline=True)
def block_argmax(vals, ids, value, index):
    """(max value, its index) over the block; ties go to the smallest index (as np.argmax)."""
    tid = cuda.threadIdx.x
    vals[tid] = value
    ids[tid] = index
    cuda.syncthreads()
    step = cuda.blockDim.x // 2
    while step > 0:
        if tid < step:
            v = vals[tid + step]
            i = ids[tid + step]
            if v > vals[tid] or (v == vals[tid] and i < ids[tid]):
                vals[tid] = v
                ids[tid] = i
        cuda.syncthreads()
        step //= 2
    best = vals[0]
    best_index = ids[0]
    cuda.syncthreads()
    return best, best_index

"""Every CUDA kernel compiles to PTX for a real GPU (sm_80), which the simulator never checks: numba
types the device code only when it compiles it. Needs libNVVM but no GPU: a CUDA toolkit numba
finds (/usr/local/cuda*, CUDA_HOME), or the toolkit wheel:

    pip install --target /tmp/nvcc nvidia-cuda-nvcc-cu12
    CUDA_HOME=/tmp/nvcc/nvidia/cuda_nvcc .venv/bin/pytest -q tests/test_cuda_compile.py

Skipped where numba finds no libNVVM."""
import pytest
from numba import cuda
from numba import types as T

from engine.kernels.cuda.dequant import SUPPORTED as CUDA_TYPES


def _nvvm_available() -> bool:
    try:
        from numba.cuda.cudadrv import nvvm
        return nvvm.is_available()
    except Exception:
        return False


pytestmark = pytest.mark.skipif(not _nvvm_available(), reason="no libNVVM (set CUDA_HOME to a CUDA toolkit)")


def _kernels():
    from engine.kernels.cuda import attention as A
    from engine.kernels.cuda import dequant as D
    from engine.kernels.cuda import matmul as M
    from engine.kernels.cuda import ops as O
    from engine.kernels.cuda import sampling as S

    f32, f64, i32, u8, i64 = T.float32, T.float64, T.int32, T.uint8, T.int64

    def a(dt, nd):
        return T.Array(dt, nd, "C")
    cases = []
    for t in CUDA_TYPES:
        for tpp in (1, M.TOKENS_PER_PASS):
            for acc in (False, True):
                cases.append((f"matmul-{t}-{tpp}-{acc}", M._build(t, tpp, acc), (a(u8, 2), a(f32, 2), a(f32, 2))))
        cases.append((f"embed-{t}", O._embed_kernel(t), (a(i32, 1), a(u8, 2), a(f32, 2))))
        cases.append((f"dequantize_row-{t}", D._dequantize_row_kernel(t), (a(u8, 1), a(f32, 1))))
    attention = (a(f32, 2), a(f32, 4), a(f32, 4), a(i32, 2), a(i32, 1), a(i32, 1), f32)
    cases += [
        ("rms_norm", O._rms_norm_kernel, (a(f32, 2), a(f32, 1), f32, a(f32, 2))),
        ("rope_tables", O._rope_tables_kernel, (a(i32, 1), a(f64, 1), a(f32, 2), a(f32, 2))),
        ("rope", O._rope_kernel, (a(f32, 2), i64, i64, a(f32, 2), a(f32, 2))),
        ("silu_mul", O._silu_mul_kernel, (a(f32, 2), a(f32, 2), a(f32, 2))),
        ("add", O._add_kernel, (a(f32, 2), a(f32, 2))),
        ("gather_rows", O._gather_rows_kernel, (a(f32, 2), a(i32, 1), a(f32, 2))),
        ("fill", O._fill_kernel, (a(f32, 1), f32)),
        ("write_kv", A._write_kv_kernel, (a(f32, 2), a(f32, 2), a(i32, 1), a(f32, 4), a(f32, 4))),
        ("paged_attention", A._paged_attention_kernel, attention + (a(i32, 1), a(f32, 2))),
        ("prefill_attention", A._prefill_attention_kernel, attention + (a(i32, 2), a(f32, 2))),
        ("copy_block_out", A._copy_block_out_kernel, (a(f32, 3), i64, a(f32, 2))),
        ("copy_block_in", A._copy_block_in_kernel, (a(f32, 2), i64, a(f32, 3))),
        ("sample", S._sample_kernel, (a(f32, 2), a(f64, 1), a(i32, 1), a(f64, 1), a(i32, 1), a(f32, 1))),
    ]
    return cases


def test_every_kernel_compiles_to_ptx(monkeypatch):
    import numba.cuda.dispatcher as dispatcher

    class NoGpu:                        # device functions ask the current GPU for its compute capability
        compute_capability = (8, 0)
    monkeypatch.setattr(dispatcher, "get_current_device", lambda: NoGpu())
    failures = []
    for name, kernel, signature in _kernels():
        try:
            cuda.compile_ptx(kernel.py_func, signature, cc=(8, 0))
        except Exception as e:
            failures.append(f"{name}: {type(e).__name__}: {str(e)[:300]}")
    assert not failures, "\n".join(failures)

"""Process-wide numba settings, applied when `engine` is imported, before any kernel exists.

Threading layer: numba's default 'workqueue' costs ~75 us to start a parallel loop, OpenMP ~1.5 us,
and a decode step starts a few hundred. We ask for OpenMP when libgomp is loadable and the user
has not chosen a layer.

Kernel cache: numba's on-disk cache checks the timestamp of a function's own file only, so a
kernel that inlines a changed kernel from another file would keep running the old code. The cache
therefore lives in a folder named by a hash of every CPU kernel source file: any change to any
such kernel starts a fresh cache. The CUDA kernels (kernels/cuda) are left out of the hash: they
are compiled per process, never cached here, and editing them must not throw the CPU cache away.
NUMBA_CACHE_DIR, when set, is used as the parent of that folder.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

_KERNEL_DIR = Path(__file__).resolve().parent / "kernels"
_CUDA_DIR = _KERNEL_DIR / "cuda"
_configured = False


def kernel_source_hash() -> str:
    h = hashlib.sha256()
    for path in sorted(_KERNEL_DIR.rglob("*.py")):
        if _CUDA_DIR in path.parents:
            continue
        h.update(path.relative_to(_KERNEL_DIR).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def kernel_cache_dir() -> Path:
    parent = os.environ.get("NUMBA_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "meshllm", "numba")
    return Path(parent) / kernel_source_hash()


def configure(num_threads: int | None = None) -> None:
    global _configured
    import numba
    if not _configured:
        _configured = True
        if "NUMBA_THREADING_LAYER" not in os.environ:
            try:
                from numba.np.ufunc import omppool  # noqa: F401  (fails without libgomp)
                numba.config.THREADING_LAYER = "omp"
            except ImportError:
                pass
        cache = kernel_cache_dir()
        cache.mkdir(parents=True, exist_ok=True)
        numba.config.CACHE_DIR = str(cache)
    if num_threads:
        numba.set_num_threads(max(1, min(num_threads, numba.config.NUMBA_NUM_THREADS)))

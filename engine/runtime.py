"""Process-wide numba settings, applied before the first kernel is compiled.

The threading layer matters: numba's default 'workqueue' layer costs ~75 us to start a parallel
loop, OpenMP ~1.5 us, and a decode step starts a few hundred. We ask for OpenMP when libgomp
is loadable and the user has not chosen a layer.
"""
from __future__ import annotations

import os

_configured = False


def configure(num_threads: int | None = None) -> None:
    global _configured
    if not _configured:
        _configured = True
        if "NUMBA_THREADING_LAYER" not in os.environ:
            import numba
            try:
                from numba.np.ufunc import omppool  # noqa: F401  (fails without libgomp)
                numba.config.THREADING_LAYER = "omp"
            except ImportError:
                pass
    if num_threads:
        import numba
        numba.set_num_threads(min(num_threads, numba.config.NUMBA_NUM_THREADS))

"""The CUDA kernels under numba's simulator. Collected only with NUMBA_ENABLE_CUDASIM=1 (see
tests/conftest.py); tests/test_cuda_simulator.py runs this folder in such a process.

Every simulated GPU thread is a Python thread, so shapes here are tiny and a shorter thread
switch interval keeps the barriers (a round of thread switches each) from dominating.

The simulator swaps `numba.cuda` for its fake module in a device function's module globals on
every call and swaps it back on return. With device functions in a module of their own
(engine/kernels/cuda/reduce.py) two simulated threads race: the second to enter sees the fake
already in place and records nothing to restore, the first to leave restores the real module
while the second still runs, and it fails with "module 'numba.cuda' has no attribute
'threadIdx'" (numba-cuda PR #690 fixes it upstream; the numba we pin lacks the fix). A
reference-counted swap under a lock, per globals dict, closes the race.

`cuda.shared.array` has a race of its own: the simulator keys a block's shared arrays by the
calling line and creates one on a miss, unlocked, so two threads that miss together each get an
array of their own, and the one that loses the store computes on memory no other thread sees
(a wrong row of attention now and then). The allocation is made under a lock here.
"""
import sys
import threading
import traceback
from contextlib import contextmanager

import numpy as np
from numba import config

if config.ENABLE_CUDASIM:
    from numba.core import types
    from numba.cuda.simulator import kernel as _sim_kernel
    from numba.cuda.simulator import kernelapi as _sim_kernelapi
    from numba.np import numpy_support

    sys.setswitchinterval(1e-4)

    _swap_lock = threading.Lock()
    _swaps: dict[int, tuple[int, dict]] = {}     # id(fn.__globals__) -> (active calls, real bindings)

    @contextmanager
    def _swapped_cuda_module(fn, fake_cuda_module):
        from numba import cuda
        globs, key = fn.__globals__, id(fn.__globals__)
        with _swap_lock:
            active, real = _swaps.get(key, (0, {}))
            if active == 0:
                real = {name: value for name, value in globs.items() if value is cuda}
                globs.update(dict.fromkeys(real, fake_cuda_module))
            _swaps[key] = (active + 1, real)
        try:
            yield
        finally:
            with _swap_lock:
                active, real = _swaps.pop(key)
                if active == 1:
                    globs.update(real)
                else:
                    _swaps[key] = (active - 1, real)

    _sim_kernel.swapped_cuda_module = _swapped_cuda_module

    _shared_lock = threading.Lock()

    def _shared_array(self, shape, dtype):
        """FakeCUDAShared.array with the miss-and-create under a lock (dynamic shared memory,
        shape 0, is one buffer and needs none)."""
        if isinstance(dtype, types.Type):
            dtype = numpy_support.as_dtype(dtype)
        if shape == 0:
            count = self._dynshared_size // dtype.itemsize
            return np.frombuffer(self._dynshared.data, dtype=dtype, count=count)
        caller = tuple(traceback.extract_stack(sys._getframe(1), limit=1)[-1][0:2])
        with _shared_lock:
            res = self._allocations.get(caller)
            if res is None:
                res = self._allocations[caller] = np.empty(shape, dtype)
        return res

    _sim_kernelapi.FakeCUDAShared.array = _shared_array

"""What this host's CPU can do, read once from LLVM (the features numba compiles for).

The CPU kernels choose between instruction sequences and between whole kernels on these flags.
numba freezes a module-level flag into the code it compiles, and its on-disk cache keys every
entry by the host's CPU name and features, so a cache made on one machine is never run on
another kind.

    HAS_AVX2         256-bit integer vectors (vpmaddubsw, vpmaddwd)
    HAS_AVX512F      512-bit float vectors: a 16-lane vector is one register
    HAS_AVX512_VNNI  vpdpbusd on 256-bit vectors (AVX-512 VL)
    HAS_AVX_VNNI     vpdpbusd without AVX-512 (Alder Lake and later)
    HAS_VNNI         either VNNI
"""
import llvmlite.binding as llvm_binding

_features = llvm_binding.get_host_cpu_features()

HAS_AVX2 = bool(_features.get("avx2"))
HAS_AVX512F = bool(_features.get("avx512f"))
HAS_AVX512_VNNI = bool(_features.get("avx512vnni") and _features.get("avx512vl"))
HAS_AVX_VNNI = bool(_features.get("avxvnni"))
HAS_VNNI = HAS_AVX512_VNNI or HAS_AVX_VNNI


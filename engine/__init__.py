"""meshllm's inference engine: a Llama-family Transformer on numba kernels over GGUF weights.

A library: it imports numpy, numba, gguf, tokenizers and jinja2, never grpc or redis.
"""
from .runtime import configure as _configure

_configure()

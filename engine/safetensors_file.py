"""Read a .safetensors file: zero-copy NumPy views of its tensors (no PyTorch).

The format: an 8-byte little-endian header length, a JSON header {name: {dtype, shape,
data_offsets: [begin, end]}, "__metadata__": {...}}, then the raw tensor bytes.
"""
from __future__ import annotations

import json
import mmap
import os
import struct

import numpy as np

_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I64": np.int64, "I32": np.int32,
           "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


class SafetensorsError(ValueError):
    pass


class SafetensorsFile:
    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        try:
            with open(self.path, "rb") as f:
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        except (OSError, ValueError) as e:
            raise SafetensorsError(f"cannot open {self.path!r}: {e}") from e
        if len(self._map) < 8:
            raise SafetensorsError(f"{self.path!r} is not a safetensors file")
        (n,) = struct.unpack("<Q", self._map[:8])
        if n > len(self._map) - 8:
            raise SafetensorsError(f"{self.path!r}: header runs past the end of the file")
        try:
            self.header = json.loads(self._map[8:8 + n])
        except ValueError as e:
            raise SafetensorsError(f"{self.path!r}: unreadable header ({e})") from e
        self.metadata = self.header.pop("__metadata__", {})
        self._data = np.frombuffer(self._map, dtype=np.uint8, offset=8 + n)

    def names(self) -> list[str]:
        return list(self.header)

    def tensor(self, name: str) -> np.ndarray:
        info = self.header.get(name)
        if info is None:
            raise SafetensorsError(f"{self.path!r} has no tensor {name!r}")
        dtype = _DTYPES.get(info["dtype"])
        if dtype is None:
            raise SafetensorsError(f"{name}: dtype {info['dtype']} is not supported")
        begin, end = info["data_offsets"]
        if end > self._data.shape[0]:
            raise SafetensorsError(f"{name} runs past the end of {self.path!r} (truncated?)")
        return self._data[begin:end].view(dtype).reshape(info["shape"])

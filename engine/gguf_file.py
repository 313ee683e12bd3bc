"""Read a GGUF file: its metadata and zero-copy views of its tensors.

The file is memory-mapped once; every tensor is a uint8 view (rows, row_bytes) into that map,
in its own GGML type. Nothing is dequantized or copied here.

We parse the header ourselves rather than with gguf-py's GGUFReader: that reader builds a NumPy
view per field part and takes seconds on a 49k-token vocabulary, which would dominate start-up.
The format (GGUF v2/v3): magic "GGUF", version u32, tensor count u64, metadata count u64, the
metadata key/value pairs, the tensor infos, then the tensor data at `general.alignment`.
"""
from __future__ import annotations

import hashlib
import mmap
import os
import struct
from dataclasses import dataclass, field

import numpy as np

from .quants import quant_type

GGUF_MAGIC = b"GGUF"

# GGUF metadata value types
_UINT8, _INT8, _UINT16, _INT16, _UINT32, _INT32, _FLOAT32, _BOOL, _STRING, _ARRAY, _UINT64, _INT64, _FLOAT64 = range(13)
_SCALAR_FORMATS = {
    _UINT8: "<B", _INT8: "<b", _UINT16: "<H", _INT16: "<h", _UINT32: "<I", _INT32: "<i",
    _FLOAT32: "<f", _BOOL: "<?", _UINT64: "<Q", _INT64: "<q", _FLOAT64: "<d",
}
_NUMPY_DTYPES = {
    _UINT8: np.uint8, _INT8: np.int8, _UINT16: np.uint16, _INT16: np.int16, _UINT32: np.uint32,
    _INT32: np.int32, _FLOAT32: np.float32, _BOOL: np.bool_, _UINT64: np.uint64, _INT64: np.int64,
    _FLOAT64: np.float64,
}


class GGUFError(ValueError):
    """The file is not a GGUF file we can read, or lacks something the model needs."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    ggml_type: int
    shape: tuple[int, ...]   # GGML order: shape[0] is the contiguous (innermost) dimension
    offset: int              # from the start of the data section


@dataclass
class Tensor:
    """A weight in its GGML type. A matrix W (out_features, in_features) has rows = out_features."""
    name: str
    ggml_type: int
    rows: int
    cols: int
    data: np.ndarray         # (rows, row_bytes) uint8, a view into the file map

    @property
    def type_name(self) -> str:
        return quant_type(self.ggml_type).name


@dataclass
class GGUFFile:
    path: str
    version: int
    metadata: dict
    tensor_infos: dict[str, TensorInfo]
    data_offset: int
    _map: mmap.mmap = field(repr=False)
    _buffer: np.ndarray = field(repr=False)

    @classmethod
    def open(cls, path: str) -> GGUFFile:
        path = os.fspath(path)
        try:
            with open(path, "rb") as f:
                # copy-on-write: writable (one numba signature for file and test arrays), never written
                mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        except (OSError, ValueError) as e:
            raise GGUFError(f"cannot open model file {path!r}: {e}") from e
        reader = _HeaderReader(mapped, path)
        magic = reader.raw(4)
        if magic != GGUF_MAGIC:
            raise GGUFError(f"{path!r} is not a GGUF file (magic {magic!r})")
        version = reader.scalar(_UINT32)
        if version not in (2, 3):
            raise GGUFError(f"{path!r}: GGUF version {version} is not supported (2 or 3)")
        n_tensors = reader.scalar(_UINT64)
        n_kv = reader.scalar(_UINT64)
        metadata = {}
        for _ in range(n_kv):
            key = reader.string()
            metadata[key] = reader.value(reader.scalar(_UINT32))
        infos = {}
        for _ in range(n_tensors):
            name = reader.string()
            n_dims = reader.scalar(_UINT32)
            shape = tuple(reader.scalar(_UINT64) for _ in range(n_dims))
            ggml_type = reader.scalar(_UINT32)
            offset = reader.scalar(_UINT64)
            infos[name] = TensorInfo(name, ggml_type, shape, offset)
        alignment = int(metadata.get("general.alignment", 32))
        data_offset = (reader.pos + alignment - 1) // alignment * alignment
        buffer = np.frombuffer(mapped, dtype=np.uint8)
        return cls(path, version, metadata, infos, data_offset, mapped, buffer)

    def tensor(self, name: str) -> Tensor:
        info = self.tensor_infos.get(name)
        if info is None:
            raise GGUFError(f"{self.path!r} has no tensor {name!r}")
        qt = quant_type(info.ggml_type)
        cols = info.shape[0]
        rows = int(np.prod(info.shape[1:])) if len(info.shape) > 1 else 1
        row_bytes = qt.row_bytes(cols)
        start = self.data_offset + info.offset
        end = start + rows * row_bytes
        if end > self._buffer.shape[0]:
            raise GGUFError(f"{self.path!r}: tensor {name!r} runs past the end of the file (truncated?)")
        data = self._buffer[start:end].reshape(rows, row_bytes)
        return Tensor(name, info.ggml_type, rows, cols, data)

    def has_tensor(self, name: str) -> bool:
        return name in self.tensor_infos

    def decode_weight_bytes(self) -> int:
        """The bytes of weights one decoded token reads: every tensor once, less the embedding
        table (one row of it is read) unless it is also the output head (no output.weight)."""
        total = sum(self.tensor(name).data.nbytes for name in self.tensor_infos)
        if self.has_tensor("output.weight") and self.has_tensor("token_embd.weight"):
            total -= self.tensor("token_embd.weight").data.nbytes
        return total

    def fingerprint(self) -> str:
        """A stable id for this model's weights, for keys shared between processes.

        sha256 over the header (metadata and tensor table) and the first and last MiB of the
        tensor data: cheap at start-up for any model size, and different for any re-quantization.
        """
        h = hashlib.sha256()
        h.update(self._buffer[: self.data_offset].tobytes())
        data = self._buffer[self.data_offset:]
        h.update(data[: 1 << 20].tobytes())
        h.update(data[-(1 << 20):].tobytes())
        h.update(str(data.shape[0]).encode())
        return h.hexdigest()[:32]


class _HeaderReader:
    def __init__(self, buf: mmap.mmap, path: str):
        self.buf = buf
        self.pos = 0
        self.path = path

    def raw(self, n: int) -> bytes:
        if self.pos + n > len(self.buf):
            raise GGUFError(f"{self.path!r}: header ends early (truncated file?)")
        b = self.buf[self.pos: self.pos + n]
        self.pos += n
        return b

    def scalar(self, vtype: int):
        fmt = _SCALAR_FORMATS[vtype]
        (v,) = struct.unpack(fmt, self.raw(struct.calcsize(fmt)))
        return v

    def string(self) -> str:
        n = self.scalar(_UINT64)
        return self.raw(n).decode("utf-8", errors="replace")

    def value(self, vtype: int):
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            item_type = self.scalar(_UINT32)
            count = self.scalar(_UINT64)
            if item_type == _STRING:
                return [self.string() for _ in range(count)]
            if item_type in _NUMPY_DTYPES:
                dtype = np.dtype(_NUMPY_DTYPES[item_type]).newbyteorder("<")
                arr = np.frombuffer(self.raw(count * dtype.itemsize), dtype=dtype).copy()
                return arr
            return [self.value(item_type) for _ in range(count)]
        if vtype in _SCALAR_FORMATS:
            return self.scalar(vtype)
        raise GGUFError(f"{self.path!r}: unknown metadata value type {vtype}")

"""How much memory a model will take, read from its GGUF header before any worker tries.

A load that asks for more memory than the machine has does not fail cleanly: the kernel's OOM
killer ends the worker (or another process) after the machine has ground through swap. So the
router estimates the weights plus the KV cache of the configured context, and refuses up front.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

# GGUF value types: fixed sizes by type id; 8 is a string, 9 an array.
_FIXED = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
F16_BYTES = 2.0  # llama.cpp's default KV cache type
_SHARD = re.compile(r"^(?P<stem>.*)-(?P<index>\d{5})-of-(?P<count>\d{5})\.gguf$")


class GgufError(ValueError):
    pass


@dataclass(frozen=True)
class MemoryNeed:
    weights: int
    kv_cache: int

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache


def memory_needed(
    path: str,
    ctx_size: int,
    extra_files: tuple[str, ...] = (),
    key_bytes: float = F16_BYTES,
    value_bytes: float = F16_BYTES,
) -> MemoryNeed:
    """Weights (every shard and extra file) plus a KV cache for `ctx_size` tokens (0 means the
    model's training context, as llama.cpp reads it) at the given bytes per K and V value."""
    header = read_header(path)
    arch = header.get("general.architecture", "")

    def number(key: str, default: int = 0) -> int:
        value = header.get(f"{arch}.{key}")
        if value is None:
            return default
        return max(value) if isinstance(value, list) else int(value)  # per-layer lists

    tokens = ctx_size or number("context_length")
    embedding = number("embedding_length")
    heads = number("attention.head_count")
    kv_heads = number("attention.head_count_kv", heads)
    head_dim = embedding // heads if heads else 0
    per_token = kv_heads * (
        number("attention.key_length", head_dim) * key_bytes
        + number("attention.value_length", head_dim) * value_bytes
    )
    kv_cache = int(tokens * number("block_count") * per_token)
    weights = sum(Path(file).stat().st_size for file in (*_shards(path), *extra_files))
    return MemoryNeed(weights, kv_cache)


def read_header(path: str, stop_at: str = "tokenizer.") -> dict[str, Any]:
    """The key/value metadata of a GGUF file up to the first key starting with `stop_at`
    (converters write the model's keys before the vocabulary, which is most of a header)."""
    with open(path, "rb") as file:
        if file.read(4) != b"GGUF":
            raise GgufError(f"{path} is not a GGUF file")
        version, _tensors, count = _unpack(file, "<IQQ")
        if version < 2:
            raise GgufError(f"{path} is GGUF version {version}, too old")
        values: dict[str, Any] = {}
        for _ in range(count):
            key = _string(file)
            if key.startswith(stop_at):
                break
            values[key] = _value(file, _unpack(file, "<I")[0])
        return values


def _shards(path: str) -> list[str]:
    match = _SHARD.match(Path(path).name)
    if match is None:
        return [path]
    count = int(match["count"])
    return [
        str(Path(path).with_name(f"{match['stem']}-{index:05d}-of-{count:05d}.gguf"))
        for index in range(1, count + 1)
    ]


def _unpack(file: BinaryIO, layout: str) -> tuple[Any, ...]:
    size = struct.calcsize(layout)
    data = file.read(size)
    if len(data) != size:
        raise GgufError("the GGUF header is truncated")
    return struct.unpack(layout, data)


def _string(file: BinaryIO) -> str:
    (length,) = _unpack(file, "<Q")
    data = file.read(length)
    if len(data) != length:
        raise GgufError("the GGUF header is truncated")
    return data.decode("utf-8", errors="replace")


def _value(file: BinaryIO, kind: int) -> Any:
    if kind in _FIXED:
        return _unpack(file, "<" + _FIXED[kind])[0]
    if kind == _STRING:
        return _string(file)
    if kind == _ARRAY:
        item_kind, length = _unpack(file, "<IQ")
        if item_kind in _FIXED:
            layout = f"<{length}{_FIXED[item_kind]}"
            if length > 4096:  # vocabularies and scores: skipped
                file.seek(struct.calcsize(layout), 1)
                return None
            return list(_unpack(file, layout))
        for _ in range(length):
            _value(file, item_kind)
        return None
    raise GgufError(f"unknown GGUF value type {kind}")

"""The memory estimate the router refuses impossible loads with, read from GGUF headers."""

from __future__ import annotations

from pathlib import Path

import pytest

from router.gguf_memory import GgufError, memory_needed, read_header
from tests.tinymodels import write_tiny_llama


def test_estimate_is_weights_plus_an_f16_cache_of_the_context(tmp_path: Path) -> None:
    model = write_tiny_llama(tmp_path / "m.gguf", embedding=64, blocks=2, heads=4, context=1024)
    need = memory_needed(str(model), 4096)
    assert need.weights == model.stat().st_size
    assert need.kv_cache == 4096 * 2 * 4 * (16 + 16) * 2  # tokens, blocks, heads, k+v, f16
    assert memory_needed(str(model), 0).kv_cache == 1024 * 2 * 4 * 32 * 2  # trained context
    assert read_header(str(model))["general.architecture"] == "llama"


def test_shards_and_extra_files_all_count(tmp_path: Path) -> None:
    first = write_tiny_llama(tmp_path / "m-00001-of-00002.gguf")
    (tmp_path / "m-00002-of-00002.gguf").write_bytes(b"x" * 1000)
    (tmp_path / "mmproj.gguf").write_bytes(b"y" * 500)
    need = memory_needed(str(first), 16, (str(tmp_path / "mmproj.gguf"),))
    assert need.weights == first.stat().st_size + 1500


def test_broken_headers_are_errors_not_crashes(tmp_path: Path) -> None:
    model = write_tiny_llama(tmp_path / "m.gguf")
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(model.read_bytes()[:100])
    with pytest.raises(GgufError, match="truncated"):
        read_header(str(cut))
    (tmp_path / "text.gguf").write_text("hello")
    with pytest.raises(GgufError, match="not a GGUF"):
        read_header(str(tmp_path / "text.gguf"))

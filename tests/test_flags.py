"""llama-server's flags: unknown ones stop the start, known ones are applied or named."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from router.flags import canonical_key, parse_model_flags, preset_value
from router.model_settings import model_settings
from tests.server import ROOT
from tests.tinymodels import write_tiny_lora


def start_and_fail(*args: str, cache: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "router", *args],
        cwd=ROOT,
        env={"LLAMA_CACHE": str(cache), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_an_unknown_flag_stops_the_start_naming_it_and_the_closest(tmp_path: Path) -> None:
    ran = start_and_fail("--models-dir", str(tmp_path), "--ctx-sise", "512", cache=tmp_path)
    assert ran.returncode == 1
    assert "invalid argument: --ctx-sise" in ran.stderr
    assert "did you mean --ctx-size?" in ran.stderr
    typo = start_and_fail("--models-dir", str(tmp_path), "--models-dri", "x", cache=tmp_path)
    assert typo.returncode == 1
    assert "did you mean --models-dir?" in typo.stderr
    bad_value = start_and_fail("--models-dir", str(tmp_path), "-fa", "maybe", cache=tmp_path)
    assert bad_value.returncode == 1
    assert "--flash-attn: 'maybe'" in bad_value.stderr


def test_a_known_flag_that_is_not_applied_is_named_at_start_and_in_props(
    router, models_dir: Path
) -> None:
    server = router("--models-dir", str(models_dir), "--no-slots", "--props", "-cb")
    assert "accepted but not applied here: --cont-batching, --props" in server.log()
    props = server.get("/props").json()
    assert props["unapplied_flags"] == ["--cont-batching", "--props"]
    assert server.get("/slots", params={"model": "tiny-a"}).status_code == 501  # --no-slots
    quiet = router("--models-dir", str(models_dir), "-c", "512", "-fa", "off", "--no-mmap")
    assert "not applied" not in quiet.log()
    assert quiet.get("/props").json()["unapplied_flags"] == []


def test_cache_type_k_reaches_llama_cpp(router, models_dir: Path) -> None:
    """llama.cpp's own report of the KV cache it allocated, through /props?model=."""
    plain = router("--models-dir", str(models_dir), "-c", "1024")
    default = plain.get("/props", params={"model": "slow"}).json()["kv_cache"]
    assert default["type_k"] == "f16"
    assert default["k_mib"] == default["v_mib"]
    quantized = router("--models-dir", str(models_dir), "-c", "1024", "-ctk", "q8_0")
    kv = quantized.get("/props", params={"model": "slow"}).json()["kv_cache"]
    assert kv["type_k"] == "q8_0"
    assert kv["type_v"] == "f16"
    assert kv["k_mib"] < 0.6 * default["k_mib"]
    assert kv["size_mib"] < default["size_mib"]


def test_lora_adapters_are_applied_at_their_scale(router, tmp_path: Path, models_dir: Path) -> None:
    adapter = write_tiny_lora(tmp_path / "adapter.gguf")
    base = models_dir / "tiny-a.gguf"
    preset = tmp_path / "models.ini"
    preset.write_text(
        f"[plain]\nmodel = {base}\n\n[tuned]\nmodel = {base}\nlora = {adapter}\n\n"
        f"[zero]\nmodel = {base}\nlora-scaled = {adapter}:0\n"
    )
    server = router("--models-preset", str(preset))
    body = {"prompt": "hello", "max_tokens": 12, "temperature": 0}

    def text(model: str) -> str:
        reply = server.post("/v1/completions", {"model": model, **body})
        assert reply.status_code == 200, reply.text
        return str(reply.json()["choices"][0]["text"])

    assert text("zero") == text("plain")
    assert text("tuned") != text("plain")


def test_a_preset_with_an_unknown_key_names_its_file_and_line(
    tmp_path: Path, models_dir: Path
) -> None:
    preset = tmp_path / "models.ini"
    preset.write_text(
        f"[*]\nctx-size = 512\n\n[a]\nmodel = {models_dir / 'tiny-a.gguf'}\nctx-sise = 9\n"
    )
    ran = start_and_fail("--models-preset", str(preset), cache=tmp_path)
    assert ran.returncode == 1
    assert f"{preset}:6: unknown key 'ctx-sise' in section [a]" in ran.stderr


def test_a_preset_key_that_is_not_applied_is_logged_with_its_line(
    router, tmp_path: Path, models_dir: Path
) -> None:
    preset = tmp_path / "models.ini"
    preset.write_text(f"[a]\nmodel = {models_dir / 'tiny-a.gguf'}\nno-mmap = true\nspec-type = x\n")
    server = router("--models-preset", str(preset))
    assert f"{preset}:4: llama-server key 'spec-type' is accepted but not applied" in server.log()
    assert "no-mmap" not in server.log()
    props = server.get("/props", params={"model": "a"}).json()
    assert props["unapplied_flags"] == ["--spec-type"]


def test_spellings_resolve_to_one_name() -> None:
    assert canonical_key("-c") == canonical_key("--ctx-size") == "ctx-size"
    assert canonical_key("LLAMA_ARG_CTX_SIZE") == canonical_key("ctx_size") == "ctx-size"
    assert canonical_key("-C") == "cpu-mask"  # short spellings keep their case
    assert canonical_key("LLAMA_ARG_THINK") == "reasoning-format"
    assert preset_value("no-mmap", "true") == ("mmap", "false")
    flags = parse_model_flags(
        ["-ngl", "0", "--seed", "-1", "--no-kv-offload", "--lora", "a", "--lora=b", "-fa", "on"]
    )
    assert flags == {
        "n-gpu-layers": "0",
        "seed": "-1",
        "kv-offload": "false",
        "lora": "a,b",
        "flash-attn": "on",
    }


def test_model_flags_become_llama_cpp_settings(tmp_path: Path) -> None:
    adapter = tmp_path / "adapter.gguf"
    adapter.write_bytes(b"")
    settings = model_settings(
        "m",
        "m.gguf",
        None,
        {
            "load-mode": "mlock",
            "cache-type-v": "q4_0",
            "rope-scale": "4",
            "override-kv": "a.b=int:3,c=str:x,d=bool:false",
            "lora-scaled": f"{adapter}:0.5",
            "yarn-orig-ctx": "2048",
            "kv-offload": "false",
        },
    )
    assert (settings.use_mmap, settings.use_mlock) == (False, True)
    assert settings.cache_type_v == "q4_0"
    assert settings.rope_freq_scale == 0.25
    assert settings.kv_overrides == {"a.b": 3, "c": "x", "d": False}
    assert settings.loras == [(str(adapter), 0.5)]
    assert settings.yarn == {"yarn_orig_ctx": 2048}
    assert settings.offload_kqv is False


def test_http_workers_auto_is_one_per_core_and_a_count_is_bounded() -> None:
    from router.cli import config_from_args

    assert config_from_args(["--http-workers", "auto"]).http_workers == len(os.sched_getaffinity(0))
    assert config_from_args(["--http-workers", "3"]).http_workers == 3
    assert config_from_args([]).http_workers == 1
    for wrong in ("0", "65", "many"):
        with pytest.raises(SystemExit):
            config_from_args(["--http-workers", wrong])

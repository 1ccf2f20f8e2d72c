"""Typed worker settings from a model's merged llama-server flags (command line > preset)."""

from __future__ import annotations

from pathlib import Path

from router.config import parse_bool
from router.flags import SAMPLING_FLAGS
from workers.protocol import ModelSettings

# llama.cpp's KV cache types, with their size in bytes per value (blocks of 32 for quantized).
CACHE_TYPE_BYTES = {
    "f32": 4.0,
    "f16": 2.0,
    "bf16": 2.0,
    "q8_0": 34 / 32,
    "q4_0": 18 / 32,
    "q4_1": 20 / 32,
    "iq4_nl": 18 / 32,
    "q5_0": 22 / 32,
    "q5_1": 24 / 32,
}
FLASH_ATTN = {"on": "on", "off": "off", "auto": "auto", "true": "on", "false": "off"}
LOAD_MODES = {  # --load-mode: (mmap, mlock)
    "auto": (True, False),
    "mmap": (True, False),
    "none": (False, False),
    "mlock": (False, True),
    "mmap+mlock": (True, True),
}
SPLIT_MODES = frozenset({"none", "layer", "row"})
REASONING_FORMATS = frozenset({"none", "deepseek", "deepseek-legacy", "auto"})
ROPE_SCALINGS = frozenset({"none", "linear", "yarn"})
YARN_FLAGS = {
    "yarn-orig-ctx": "yarn_orig_ctx",
    "yarn-ext-factor": "yarn_ext_factor",
    "yarn-attn-factor": "yarn_attn_factor",
    "yarn-beta-slow": "yarn_beta_slow",
    "yarn-beta-fast": "yarn_beta_fast",
}


# llama-server's `-np -1` (its default): four slots sharing one KV cache (`--kv-unified`)
AUTO_SLOTS = 4


def model_settings(
    model_id: str, path: str, mmproj: str | None, flags: dict[str, str]
) -> ModelSettings:
    """Typed worker settings from merged flag strings; a bad value raises ValueError."""

    def integer(key: str, default: int) -> int:
        return int(flags[key]) if key in flags else default

    def optional_int(key: str) -> int | None:
        return int(flags[key]) if key in flags else None

    def number(key: str, default: float) -> float:
        return float(flags[key]) if key in flags else default

    def boolean(key: str, default: bool) -> bool:
        return parse_bool(flags[key]) if key in flags else default

    def choice(key: str, allowed: frozenset[str] | dict[str, str], default: str) -> str:
        value = flags.get(key, default).lower()
        if value not in allowed:
            raise ValueError(f"--{key}: {value!r} is not one of {', '.join(sorted(allowed))}")
        return allowed[value] if isinstance(allowed, dict) else value

    use_mmap, use_mlock = LOAD_MODES[choice("load-mode", frozenset(LOAD_MODES), "auto")]
    sampling = {key: float(value) for key, value in flags.items() if key in SAMPLING_FLAGS}
    parallel = integer("parallel", -1)
    rope_freq_scale = number("rope-freq-scale", 0.0)
    if "rope-scale" in flags:
        rope_freq_scale = 1.0 / float(flags["rope-scale"])
    return ModelSettings(
        model_id=model_id,
        path=path,
        mmproj=flags.get("mmproj", mmproj),
        ctx_size=integer("ctx-size", 4096),
        parallel=parallel if parallel > 0 else AUTO_SLOTS,
        # as llama-server: automatic slots share one cache, a number given splits it
        kv_unified=boolean("kv-unified", parallel <= 0),
        threads=optional_int("threads"),
        threads_batch=optional_int("threads-batch"),
        batch_size=integer("batch-size", 2048),
        ubatch_size=integer("ubatch-size", 512),
        n_gpu_layers=integer("n-gpu-layers", 0),
        seed=integer("seed", -1),
        n_predict=integer("n-predict", -1),
        embeddings=boolean("embeddings", False),
        pooling=flags.get("pooling"),
        chat_template=_chat_template(flags),
        reasoning_format=choice("reasoning-format", REASONING_FORMATS, "auto"),
        reasoning_budget=_reasoning_budget(integer("reasoning-budget", -1)),
        reasoning_budget_message=flags.get("reasoning-budget-message", ""),
        spm_infill=boolean("spm-infill", False),
        sampling=sampling,
        flash_attn=choice("flash-attn", FLASH_ATTN, "auto"),
        cache_type_k=choice("cache-type-k", frozenset(CACHE_TYPE_BYTES), "f16"),
        cache_type_v=choice("cache-type-v", frozenset(CACHE_TYPE_BYTES), "f16"),
        use_mmap=boolean("mmap", use_mmap),
        use_mlock=boolean("mlock", use_mlock),
        repack=parse_bool(flags["repack"]) if "repack" in flags else None,
        split_mode=choice("split-mode", SPLIT_MODES, "layer"),
        main_gpu=integer("main-gpu", 0),
        tensor_split=_floats(flags["tensor-split"]) if "tensor-split" in flags else None,
        rope_scaling=choice("rope-scaling", ROPE_SCALINGS, "none")
        if "rope-scaling" in flags
        else None,
        rope_freq_base=number("rope-freq-base", 0.0),
        rope_freq_scale=rope_freq_scale,
        yarn={
            name: _yarn_value(name, flags[key]) for key, name in YARN_FLAGS.items() if key in flags
        },
        offload_kqv=boolean("kv-offload", True),
        op_offload=boolean("op-offload", True) if "op-offload" in flags else None,
        swa_full=boolean("swa-full", False),
        loras=_loras(flags),
        kv_overrides=_kv_overrides(flags.get("override-kv", "")),
    )


def _yarn_value(name: str, value: str) -> int | float:
    return int(value) if name == "yarn_orig_ctx" else float(value)


def _reasoning_budget(value: int) -> int:
    if value < -1:
        raise ValueError(f"--reasoning-budget: {value} is not -1 (no limit) or a token count")
    return value


def _chat_template(flags: dict[str, str]) -> str | None:
    if "chat-template-file" in flags:
        return Path(flags["chat-template-file"]).expanduser().read_text(encoding="utf-8")
    return flags.get("chat-template")


def _floats(value: str) -> list[float]:
    return [float(item) for item in value.replace("/", ",").split(",") if item.strip()]


def _loras(flags: dict[str, str]) -> list[tuple[str, float]]:
    """`--lora A,B` at scale 1 and `--lora-scaled A:0.5,B:2`, as llama-server reads them."""
    loras = [(path.strip(), 1.0) for path in flags.get("lora", "").split(",") if path.strip()]
    for item in flags.get("lora-scaled", "").split(","):
        if item.strip():
            path, _, scale = item.strip().rpartition(":")
            if not path:
                raise ValueError(f"--lora-scaled: expected FNAME:SCALE, got {item!r}")
            loras.append((path, float(scale)))
    for path, _ in loras:
        if not Path(path).is_file():
            raise ValueError(f"LoRA adapter not found: {path}")
    return loras


def _kv_overrides(value: str) -> dict[str, bool | int | float | str]:
    """`KEY=TYPE:VALUE,...` with TYPE int, float, bool or str, as llama-server's --override-kv."""
    overrides: dict[str, bool | int | float | str] = {}
    for item in value.split(","):
        if not item.strip():
            continue
        key, equals, typed = item.strip().partition("=")
        kind, colon, raw = typed.partition(":")
        if not equals or not colon or not key:
            raise ValueError(f"--override-kv: expected KEY=TYPE:VALUE, got {item!r}")
        if kind == "int":
            overrides[key] = int(raw)
        elif kind == "float":
            overrides[key] = float(raw)
        elif kind == "bool":
            overrides[key] = parse_bool(raw)
        elif kind == "str":
            overrides[key] = raw
        else:
            raise ValueError(f"--override-kv: unknown type {kind!r} in {item!r}")
    return overrides

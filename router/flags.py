"""llama-server's flags as the router reads them, on the command line and in presets.

Every spelling resolves to one canonical name (the key presets use). A flag llama-server does
not know is an error; one it knows is either used by the router, applied to every model, or
accepted with a warning that names it, never dropped without a word.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence

from router.config import parse_bool
from router.llama_flags import ENV_NAMES, LLAMA_SERVER_FLAGS, NEGATED_FLAGS

# Preset keys that describe a model rather than configure llama.cpp.
PRESET_ONLY_KEYS = frozenset(
    {
        "model",
        "alias",
        "tags",
        "load-on-startup",
        "stop-timeout",
        "dedup-cache-models",
        "pin",
        "ttl",
        "hf-repo",
        "hf-file",
        "upstream",
        "upstream-model",
        "upstream-api-key",
        "upstream-api-key-env",
    }
)
_PRESET_BOOLEANS = frozenset({"load-on-startup", "pin", "dedup-cache-models"})

# Model flags the worker applies to llama.cpp or to its sampling (see router/model_settings.py).
APPLIED_MODEL_FLAGS = frozenset(
    {
        "ctx-size",
        "parallel",
        "kv-unified",
        "threads",
        "threads-batch",
        "batch-size",
        "ubatch-size",
        "n-gpu-layers",
        "split-mode",
        "main-gpu",
        "tensor-split",
        "seed",
        "n-predict",
        "embeddings",
        "pooling",
        "chat-template",
        "chat-template-file",
        "reasoning-format",
        "reasoning-budget",
        "reasoning-budget-message",
        "spm-infill",
        "mmproj",
        "flash-attn",
        "cache-type-k",
        "cache-type-v",
        "load-mode",
        "mlock",
        "mmap",
        "repack",
        "rope-scaling",
        "rope-scale",
        "rope-freq-base",
        "rope-freq-scale",
        "yarn-orig-ctx",
        "yarn-ext-factor",
        "yarn-attn-factor",
        "yarn-beta-slow",
        "yarn-beta-fast",
        "kv-offload",
        "op-offload",
        "swa-full",
        "lora",
        "lora-scaled",
        "override-kv",
    }
)
# Generation flags, forwarded to the engine as sampling defaults under these names.
SAMPLING_FLAGS = frozenset(
    {
        "temp",
        "top-k",
        "top-p",
        "min-p",
        "typical",
        "repeat-penalty",
        "presence-penalty",
        "frequency-penalty",
    }
)
# Flags that name more things when given again: llama-server adds them up.
REPEATABLE_FLAGS = frozenset({"lora", "lora-scaled", "override-kv"})


class UsageError(Exception):
    pass


def canonical_key(name: str) -> str:
    """`--ctx-size`, `-c`, `c`, `ctx_size` and `LLAMA_ARG_CTX_SIZE` all become `ctx-size`.
    Short spellings keep their case: `-C` is `--cpu-mask`, `-c` is `--ctx-size`."""
    key = name.strip()
    if key.upper().startswith("LLAMA_ARG_"):
        stem = key[len("LLAMA_ARG_") :].lower().replace("_", "-")
        return ENV_NAMES.get(stem, stem)
    key = key.lstrip("-").replace("_", "-")
    spec = LLAMA_SERVER_FLAGS.get(key) or LLAMA_SERVER_FLAGS.get(key.lower())
    if spec is not None:
        return spec.name
    return NEGATED_FLAGS.get(key, key.lower())


def is_known(key: str) -> bool:
    """A canonical key llama-server or the router's presets know."""
    return key in LLAMA_SERVER_FLAGS or key in PRESET_ONLY_KEYS


def is_boolean(key: str) -> bool:
    spec = LLAMA_SERVER_FLAGS.get(key)
    return key in _PRESET_BOOLEANS or (spec is not None and spec.values == 0)


def preset_value(raw_key: str, value: str) -> tuple[str, str]:
    """A preset line as (canonical key, value); `no-mmap = true` is `mmap = false`."""
    bare = raw_key.strip().lstrip("-").replace("_", "-")
    if bare in NEGATED_FLAGS:
        return NEGATED_FLAGS[bare], "false" if parse_bool(value) else "true"
    return canonical_key(raw_key), value


def long_spellings(argv: Sequence[str], router_options: Iterable[str]) -> list[str]:
    """llama-server's short spellings in their long form: argparse would read `-hf` as `-h f`
    and `-hfd` as `-h -f -d`."""
    own = set(router_options)
    tokens = []
    for token in argv:
        spelling, equals, value = token[1:].partition("=")
        short = token.startswith("-") and not token.startswith("--") and token not in own
        if short and spelling in LLAMA_SERVER_FLAGS:
            token = f"--{LLAMA_SERVER_FLAGS[spelling].name}{equals}{value}"
        elif short and spelling in NEGATED_FLAGS:
            token = f"--{spelling}{equals}{value}"
        tokens.append(token)
    return tokens


def parse_model_flags(tokens: Sequence[str], known_elsewhere: Iterable[str] = ()) -> dict[str, str]:
    """The llama-server flags argparse left over: `--key value`, `--key=value`, `--flag` and
    `--no-flag`. A flag takes as many values as llama-server's; an unknown one raises."""
    flags: dict[str, str] = {}
    index = 0
    while index < len(tokens):
        token = tokens[index]
        index += 1
        if not token.startswith("-"):
            raise UsageError(f"invalid argument: {token}")
        spelling, has_value, inline = token.lstrip("-").partition("=")
        if spelling in NEGATED_FLAGS:
            flags[NEGATED_FLAGS[spelling]] = "false"
            continue
        spec = LLAMA_SERVER_FLAGS.get(spelling)
        if spec is None:
            raise UsageError(f"invalid argument: {token}{_suggestion(spelling, known_elsewhere)}")
        if has_value:
            value = inline
        elif spec.values == 0:
            value = "true"
        else:
            values = tokens[index : index + spec.values]
            if len(values) < spec.values:
                raise UsageError(f"expected value for argument: {token}")
            index += spec.values
            value = " ".join(values)
        if spec.name in REPEATABLE_FLAGS and spec.name in flags:
            value = f"{flags[spec.name]},{value}"
        flags[spec.name] = value
    return flags


def _suggestion(spelling: str, known_elsewhere: Iterable[str]) -> str:
    candidates = [
        *(f"--{name}" if len(name) > 2 else f"-{name}" for name in LLAMA_SERVER_FLAGS),
        *(f"--{name}" for name in NEGATED_FLAGS),
        *known_elsewhere,
    ]
    given = f"--{spelling}" if len(spelling) > 2 else f"-{spelling}"
    close = difflib.get_close_matches(given, candidates, n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def command_line(flags: dict[str, str]) -> list[str]:
    """Flags as llama-server's command line would spell them (`--mmap false` is `--no-mmap`)."""
    negated = {name: spelling for spelling, name in NEGATED_FLAGS.items() if len(spelling) > 2}
    args: list[str] = []
    for key, value in sorted(flags.items()):
        if not is_boolean(key):
            args += [f"--{key}", value]
        elif parse_bool(value):
            args.append(f"--{key}")
        else:
            args.append(f"--{negated[key]}" if key in negated else f"--{key}={value}")
    return args


def unapplied(keys: Iterable[str], used_by_router: Iterable[str] = ()) -> list[str]:
    """The llama-server flags among `keys` that nothing here honours."""
    used = {*APPLIED_MODEL_FLAGS, *SAMPLING_FLAGS, *PRESET_ONLY_KEYS, *used_by_router}
    return sorted(key for key in set(keys) if key not in used)

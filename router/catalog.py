"""Model sources: `--models-dir`, `--models-preset`, the cache dir and the bundled default.

The cache dir holds llama-server's hub layout (router/hf_cache.py) and, from earlier versions,
`models/<name>/` folders; both are listed with source `cache`.

Builds the table of known models (ids, aliases, tags, files and merged settings) from scratch on
every call; the supervisor compares tables to reload.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import msgspec

from router import hf_cache, hf_presets
from router.config import RouterConfig, parse_bool
from router.flags import PRESET_ONLY_KEYS
from router.presets import Presets, split_list
from router.upstream import UpstreamServer, UpstreamTarget, upstream_base
from workers.download import MANIFEST

log = logging.getLogger("llama-router")

_SHARD = re.compile(r"^(?P<stem>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.gguf$", re.IGNORECASE)

CACHE_MODELS_DIR = "models"
UPSTREAM = "upstream"


class ModelSpec(msgspec.Struct, kw_only=True):
    id: str
    source: str  # preset | models_dir | cache | upstream
    path: str | None = None
    mmproj: str | None = None
    aliases: list[str] = []
    tags: list[str] = []
    flags: dict[str, str] = {}
    preset: dict[str, str] = {}
    load_on_startup: bool = False
    stop_timeout: float = 10.0
    pin: bool = False
    ttl: float | None = None
    error: str | None = None
    can_remove: bool = False
    hidden: bool = False  # left out of GET /models (dedup-cache-models), still served by its id
    # `hf-repo` (and `hf-file`) of a preset whose model is not in the cache yet: fetched on load
    hf_repo: str | None = None
    hf_file: str | None = None
    upstream: UpstreamTarget | None = None  # served by another server, never by a worker here

    def same_settings(self, other: ModelSpec) -> bool:
        mine = (self.path, self.mmproj, self.flags, self.upstream)
        return mine == (other.path, other.mmproj, other.flags, other.upstream)


class FoundFiles(msgspec.Struct):
    id: str
    path: str
    mmproj: str | None = None
    # what the source itself knows of the model (the bundled ones); presets add to these
    tags: list[str] = []
    aliases: list[str] = []


def scan_models_dir(directory: str | Path) -> list[FoundFiles]:
    """One `.gguf` file is a model; so is a sub-directory (multi-shard set, or model + mmproj)."""
    root = Path(directory).expanduser()
    if not root.is_dir():
        return []
    found: list[FoundFiles] = []
    loose = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() == ".gguf")
    for path in loose:
        if "mmproj" in path.name.lower():
            continue
        shard = _SHARD.match(path.name)
        if shard and int(shard["index"]) != 1:
            continue
        found.append(FoundFiles(id=path.name[: -len(".gguf")], path=str(path)))
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        model = _scan_model_folder(sub)
        if model is not None:
            found.append(model)
    return found


def _scan_model_folder(folder: Path) -> FoundFiles | None:
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".gguf")
    projectors = [p for p in files if "mmproj" in p.name.lower()]
    weights = [p for p in files if "mmproj" not in p.name.lower()]
    first_shards = [p for p in weights if (m := _SHARD.match(p.name)) and int(m["index"]) == 1]
    main = first_shards[0] if first_shards else (weights[0] if weights else None)
    if main is None:
        return None
    return FoundFiles(
        id=_manifest_id(folder) or folder.name,
        path=str(main),
        mmproj=str(projectors[0]) if projectors else None,
    )


def _manifest_id(folder: Path) -> str | None:
    """A downloaded model's own name (`user/repo:QUANT`), which its folder name cannot hold."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    model_id = manifest.get("id") if isinstance(manifest, dict) else None
    return model_id if isinstance(model_id, str) and model_id else None


def build_catalog(
    config: RouterConfig,
    presets: Presets,
    bundled: list[FoundFiles],
    listed: dict[UpstreamServer, list[str]] | None = None,
) -> dict[str, ModelSpec]:
    """Every known model by id, settings merged as command line > model section > `[*]`;
    `listed` holds what each `--upstream` server last said it serves."""
    found: dict[str, tuple[str, FoundFiles]] = {}
    cache_models = Path(config.cache_dir) / CACHE_MODELS_DIR
    for files in scan_models_dir(cache_models):
        found[files.id] = ("cache", files)
    for cached in hf_cache.list_cached_models(config.cache_dir):
        found[cached.id] = ("cache", FoundFiles(cached.id, cached.path, cached.mmproj))
    for files in bundled:
        found.setdefault(files.id, ("cache", files))
    if config.models_dir:
        for files in scan_models_dir(config.models_dir):
            found[files.id] = ("models_dir", files)

    specs: dict[str, ModelSpec] = {}
    for server, remote_ids in (listed or {}).items():
        for remote_id in remote_ids:
            model_id = f"{server.prefix}/{remote_id}"
            target = UpstreamTarget(server.base, remote_id)
            specs[model_id] = ModelSpec(id=model_id, source="upstream", upstream=target)
    for model_id, (source, files) in found.items():
        section = presets.sections.get(model_id)
        specs[model_id] = _spec(
            model_id,
            "preset" if section is not None else source,
            files,
            presets.defaults,
            section or {},
            config,
        )
        specs[model_id].can_remove = source == "cache" and files not in bundled
    for model_id, section in presets.sections.items():
        if UPSTREAM in section:
            specs[model_id] = _upstream_spec(model_id, section)
        elif model_id not in specs or specs[model_id].upstream is not None:
            specs[model_id] = _preset_spec(model_id, section, presets.defaults, config)
    _hide_deduplicated(specs, presets, config.cache_dir)
    _drop_clashing_aliases(specs)
    return specs


def _preset_spec(
    model_id: str, section: dict[str, str], defaults: dict[str, str], config: RouterConfig
) -> ModelSpec:
    """A preset of its own: `model = PATH`, or `hf-repo` looked up in (or later fetched into)
    the cache."""
    path = section.get("model")
    cached = None if path else hf_presets.resolve(section, config.cache_dir)
    if cached is not None:
        path = cached[0]
    files = FoundFiles(model_id, path, cached[1] if cached else None) if path else None
    spec = _spec(model_id, "preset", files, defaults, section, config)
    hf_repo = section.get(hf_presets.HF_REPO)
    if files is None and hf_repo:
        try:
            hf_cache.split_repo_tag(hf_repo)
            spec.hf_repo, spec.hf_file = hf_repo, section.get(hf_presets.HF_FILE)
        except hf_cache.CacheError as error:
            spec.error = f"preset '{model_id}': {error}"
    elif files is None:
        spec.error = f"preset '{model_id}' has no `model` path or `hf-repo`"
    return spec


def _upstream_spec(model_id: str, section: dict[str, str]) -> ModelSpec:
    """A preset served by another OpenAI-compatible server: `upstream = URL`."""
    spec = ModelSpec(
        id=model_id,
        source="upstream",
        aliases=split_list(section.get("alias")),
        tags=split_list(section.get("tags")),
        preset=section,
    )
    key = section.get("upstream-api-key")
    key_env = section.get("upstream-api-key-env")
    if key is None and key_env:
        key = os.environ.get(key_env)
        if key is None:
            spec.error = f"preset '{model_id}': environment variable {key_env} is not set"
    try:
        base = upstream_base(section[UPSTREAM])
    except ValueError as error:
        spec.error = f"preset '{model_id}': {error}"
        return spec
    spec.upstream = UpstreamTarget(base, section.get("upstream-model", model_id), key)
    return spec


def _hide_deduplicated(specs: dict[str, ModelSpec], presets: Presets, cache_dir: str) -> None:
    """A plain cache entry whose file a `dedup-cache-models` preset already stands for."""
    merged = [{**presets.defaults, **section} for section in presets.sections.values()]
    paths = hf_presets.deduplicated_paths(merged, cache_dir)
    for spec in specs.values():
        spec.hidden = spec.source == "cache" and spec.path in paths


def _spec(
    model_id: str,
    source: str,
    files: FoundFiles | None,
    defaults: dict[str, str],
    section: dict[str, str],
    config: RouterConfig,
) -> ModelSpec:
    merged = {**defaults, **section, **config.model_flags}
    flags = {key: value for key, value in merged.items() if key not in PRESET_ONLY_KEYS}
    spec = ModelSpec(
        id=model_id,
        source=source,
        path=files.path if files else None,
        mmproj=files.mmproj if files else None,
        aliases=[*(files.aliases if files else []), *split_list(section.get("alias"))],
        tags=split_list(section.get("tags")) or (files.tags if files else []),
        flags=flags,
        preset=section,
    )
    try:
        spec.load_on_startup = parse_bool(merged.get("load-on-startup", "false"))
        spec.pin = parse_bool(merged.get("pin", "false"))
        spec.stop_timeout = float(merged.get("stop-timeout", config.stop_timeout))
        spec.ttl = float(merged["ttl"]) if "ttl" in merged else None
    except ValueError as error:
        spec.error = f"preset '{model_id}': {error}"
    return spec


def _drop_clashing_aliases(specs: dict[str, ModelSpec]) -> None:
    taken = set(specs)
    for spec in specs.values():
        kept = []
        for alias in spec.aliases:
            if alias in taken:
                log.warning(
                    "alias %r of model %r clashes with another name; skipped", alias, spec.id
                )
                continue
            taken.add(alias)
            kept.append(alias)
        spec.aliases = kept

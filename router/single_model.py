"""Single-model use, as `llama-server -m FILE` or `-hf user/repo[:TAG]` (`--hf-file`, `--alias`,
`--tags`): that one model, named as llama-server names it, loaded at start.

`-hf` fetches the model into the cache before the server starts (with the `pull` progress bars);
offline, or with the hub out of reach, a copy already in the cache serves. A repo holding a
`preset.ini` is a remote preset instead: the router serves that file's presets.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from router import hf_cache, hub
from router.catalog import ModelSpec
from router.config import RouterConfig, parse_bool
from router.control.downloads import download_with_bars
from router.hf_presets import HF_FILE, HF_REPO
from router.presets import split_list
from workers.download import DownloadError
from workers.errors import ApiError

log = logging.getLogger("llama-router")

MODEL = "model"
ALIAS = "alias"
TAGS = "tags"
# What names and describes the one model; none of it is a flag for llama.cpp.
MODEL_KEYS = frozenset({MODEL, HF_REPO, HF_FILE, ALIAS, TAGS, "offline"})


class StartupError(ValueError):
    """The model asked for on the command line cannot be had; the router does not start."""


def requested(config: RouterConfig) -> bool:
    return bool(config.model_flags.get(MODEL) or config.model_flags.get(HF_REPO))


def prepare(config: RouterConfig) -> None:
    """Fetch `-hf`'s model into the cache, or turn a remote preset into `--models-preset`."""
    flags = config.model_flags
    name = flags.get(HF_REPO)
    if not name or flags.get(MODEL):
        return
    hub_problem = "offline"
    if not parse_bool(flags.get("offline", "false")):
        try:
            found = hub.plan(name, flags.get(HF_FILE), config.cache_dir)
        except ApiError as error:  # as llama-server: whatever the hub says, the cache may do
            hub_problem = error.message
            log.warning("%s: %s; looking in the cache", name, hub_problem)
        else:
            try:
                download_with_bars(found.job)
            except DownloadError as error:
                raise StartupError(f"cannot download {name}: {error}") from error
            if found.preset is not None:
                _use_remote_preset(config, found.preset, name)
            return
    _use_cache(config, name, hub_problem)


def _use_cache(config: RouterConfig, name: str, hub_problem: str) -> None:
    try:
        repo, _ = hf_cache.split_repo_tag(name)
    except hf_cache.CacheError as error:
        raise StartupError(str(error)) from error
    files = hf_cache.cached_files(config.cache_dir, repo)
    preset = next((file for file in files if file.path == hub.PRESET_FILE), None)
    if preset is not None:
        _use_remote_preset(config, str(preset.local), name)
    elif hf_cache.resolve_cached(config.cache_dir, name, config.model_flags.get(HF_FILE)) is None:
        where = f"the cache ({config.cache_dir})"
        raise StartupError(f"{name} is not in {where} and cannot be fetched: {hub_problem}")


def _use_remote_preset(config: RouterConfig, path: str, repo: str) -> None:
    log.warning("using preset.ini from HF repo '%s': only use presets that you can trust", repo)
    config.models_preset = path
    config.model_flags = {k: v for k, v in config.model_flags.items() if k not in MODEL_KEYS}


def catalog(config: RouterConfig) -> dict[str, ModelSpec]:
    """The one model. Its id is llama-server's: the first alias (in sorted order), else the
    `-hf` repo or the `-m` path exactly as given; its aliases include that id, as there."""
    flags = config.model_flags
    aliases = sorted(set(split_list(flags.get(ALIAS))))
    hf_repo = flags.get(HF_REPO)
    path = flags.get(MODEL)
    model_id = aliases[0] if aliases else (path or hf_repo or "")
    spec = ModelSpec(
        id=model_id,
        source="preset" if path else "cache",
        aliases=aliases or [model_id],
        tags=sorted(set(split_list(flags.get(TAGS)))),
        flags={key: value for key, value in flags.items() if key not in MODEL_KEYS},
        load_on_startup=True,
        stop_timeout=config.stop_timeout,
    )
    if path:
        spec.path = os.path.abspath(Path(path).expanduser())
    elif hf_repo:
        found = _cached(config.cache_dir, hf_repo, flags.get(HF_FILE))
        if found is None:
            spec.error = f"{hf_repo} is not in the cache ({config.cache_dir})"
        else:
            spec.path, spec.mmproj = found
    return {model_id: spec}


def _cached(cache_dir: str, name: str, hf_file: str | None) -> tuple[str, str | None] | None:
    try:
        return hf_cache.resolve_cached(cache_dir, name, hf_file)
    except hf_cache.CacheError:
        return None

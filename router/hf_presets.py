"""Presets that name their model by `hf-repo = user/repo[:TAG]` (and `hf-file`), and the
`dedup-cache-models` key that hides the cache entry such a preset stands for.

The model is looked up in the hub layout of the cache; one that is not there yet is fetched on
its first load (as llama-server's model instance does with its `-hf`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from router import hf_cache
from router.config import parse_bool

HF_REPO = "hf-repo"
HF_FILE = "hf-file"
# The draft model's repo and file, by their canonical names (router/flags.py).
DRAFT_HF_REPO = ("hf-repo-draft",)
DRAFT_MODEL = ("model-draft",)
DEDUP = "dedup-cache-models"


def resolve(
    settings: Mapping[str, str],
    cache_dir: str,
    repo_keys: tuple[str, ...] = (HF_REPO,),
    file_keys: tuple[str, ...] = (HF_FILE,),
) -> tuple[str, str | None] | None:
    """(model path, mmproj path) of the settings' hf repo in the cache, None if absent there."""
    name = _first(settings, repo_keys)
    if not name:
        return None
    try:
        return hf_cache.resolve_cached(cache_dir, name, _first(settings, file_keys))
    except hf_cache.CacheError:
        return None


def _first(settings: Mapping[str, str], keys: tuple[str, ...]) -> str | None:
    return next((settings[key] for key in keys if settings.get(key)), None)


def deduplicated_paths(merged_sections: Sequence[Mapping[str, str]], cache_dir: str) -> set[str]:
    """The cached model files (main and draft) of the presets that ask for `dedup-cache-models`;
    each section comes merged with `[*]`, where the key may be set for every preset."""
    paths: set[str] = set()
    for settings in merged_sections:
        try:
            wanted = parse_bool(settings.get(DEDUP, "false"))
        except ValueError:
            wanted = False
        if not wanted:
            continue
        for repo_keys, file_keys in (((HF_REPO,), (HF_FILE,)), (DRAFT_HF_REPO, DRAFT_MODEL)):
            found = resolve(settings, cache_dir, repo_keys, file_keys)
            if found is not None:
                paths.add(found[0])
    return paths

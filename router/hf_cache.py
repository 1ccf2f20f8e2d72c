"""The Hugging Face hub layout of the cache dir, shared with llama-server (common/hf-cache.cpp).

`<cache>/models--user--repo/refs/main` holds the commit, `snapshots/<commit>/<path>` are the
repo's files (relative symlinks into `blobs/<oid>`). llama-server lists `user/repo:TAG` for every
first GGUF shard of the commit in refs whose file name ends in a quant tag, and serves the file
its `find_best_model` picks for that tag; both rules are copied here so that one cache dir gives
both servers the same models.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

REPO_PREFIX = "models--"
DEFAULT_TAGS = ("Q4_K_M", "Q8_0")  # what `-hf user/repo` without a tag looks for, in order
# Companion files that are never a model of their own.
SIDECARS = ("mmproj", "imatrix", "mtp-", "eagle3-", "dflash-", "dspark-")
LISTED_SIDECARS = ("mmproj", "mtp-", "eagle3-", "dflash-", "dspark-")
_SPLIT = re.compile(r"^(.+)-([0-9]{5})-of-([0-9]{5})$", re.IGNORECASE)
_TAG = re.compile(r"[-.]([A-Z0-9_]+)$", re.IGNORECASE)
_COMMIT = re.compile(r"^[0-9a-fA-F]{40}$")
_REPO_PART = re.compile(r"^[A-Za-z0-9_]+([./-][A-Za-z0-9_]+)*$")


@dataclass(frozen=True)
class SplitInfo:
    prefix: str  # the name without `.gguf` and without the shard suffix; the tag stays
    tag: str  # upper case, "" when the name ends in none
    index: int
    count: int


@dataclass(frozen=True)
class RepoFile:
    """A file of a repo: `path` inside the repo, `local` where it is (or will be) on disk."""

    repo: str
    path: str
    local: Path


class CacheError(Exception):
    pass


def split_info(path: str) -> SplitInfo | None:
    """llama-server's reading of a GGUF name: `dir/name-Q4_K_M-00001-of-00003.gguf`."""
    if not path.endswith(".gguf"):
        return None
    prefix = path[: -len(".gguf")]
    index = count = 1
    shard = _SPLIT.match(prefix)
    if shard:
        prefix, index, count = shard[1], int(shard[2]), int(shard[3])
    tag = _TAG.search(prefix)
    return SplitInfo(prefix, tag[1].upper() if tag else "", index, count)


def split_repo_tag(name: str) -> tuple[str, str]:
    """`user/repo:TAG` → (`user/repo`, `TAG`); the tag may be empty."""
    repo, _, tag = name.partition(":")
    if not is_valid_repo(repo):
        raise CacheError(f"invalid HF repo {name!r}, expected <user>/<model>[:quant]")
    return repo, tag


def is_valid_repo(repo: str) -> bool:
    """Exactly one `/`; `.`, `-` and `/` only between letters, digits or `_` (as llama-server)."""
    if not 0 < len(repo) <= 256 or repo.count("/") != 1:
        return False
    return all(_REPO_PART.match(part) for part in repo.split("/"))


def repo_folder(cache_dir: str | Path, repo: str) -> Path:
    return Path(cache_dir) / (REPO_PREFIX + repo.replace("/", "--"))


def _folder_repo(name: str) -> str | None:
    if not name.startswith(REPO_PREFIX):
        return None
    repo = name[len(REPO_PREFIX) :].replace("--", "/")
    return repo if is_valid_repo(repo) else None


def cached_commit(folder: Path) -> str | None:
    """The commit `refs/main` names, else that of any other ref."""
    refs = folder / "refs"
    if not refs.is_dir():
        return None
    fallback = None
    for ref in sorted(refs.iterdir()):
        try:
            commit = ref.read_text().split("\n", 1)[0].strip()
        except (OSError, UnicodeDecodeError):
            continue
        if not _COMMIT.match(commit):
            continue
        if ref.name == "main":
            return commit
        fallback = fallback or commit
    return fallback


def cached_files(cache_dir: str | Path, repo: str | None = None) -> list[RepoFile]:
    """Every file of the cached snapshot of each repo (or of `repo`), sorted for stable picks."""
    root = Path(cache_dir)
    if not root.is_dir():
        return []
    folders = [repo_folder(root, repo)] if repo else sorted(root.iterdir())
    files: list[RepoFile] = []
    for folder in folders:
        folder_repo = _folder_repo(folder.name)
        commit = cached_commit(folder) if folder_repo else None
        snapshot = folder / "snapshots" / commit if commit else None
        if folder_repo is None or snapshot is None or not snapshot.is_dir():
            continue
        for dirpath, _, names in os.walk(snapshot):
            for name in names:
                local = Path(dirpath) / name
                relative = local.relative_to(snapshot).as_posix()
                files.append(RepoFile(folder_repo, relative, local))
    return sorted(files, key=lambda file: (file.repo, file.path))


def is_model_file(path: str) -> bool:
    name = path.rsplit("/", 1)[-1]
    return path.endswith(".gguf") and not any(word in name for word in SIDECARS)


def find_best_model(files: list[RepoFile], tag: str) -> RepoFile | None:
    """The file `-hf repo:tag` means: the first (first-shard) model whose name has `tag` followed
    by `.` or `-`; without a tag Q4_K_M, then Q8_0, then any model file."""
    firsts = [
        file
        for file in files
        if is_model_file(file.path) and (info := split_info(file.path)) and info.index == 1
    ]
    for wanted in [tag] if tag else DEFAULT_TAGS:
        # A name whose own tag is the one wanted comes first: llama-server's pattern alone
        # would take `x-IQ4_K_M.gguf` for Q4_K_M when it sorts first.
        exact = [file for file in firsts if _tag_of(file.path) == wanted.upper()]
        pattern = re.compile(re.escape(wanted) + r"[.-]", re.IGNORECASE)
        for file in exact + firsts:
            if pattern.search(file.path):
                return file
    return firsts[0] if firsts and not tag else None


def shards_of(files: list[RepoFile], primary: RepoFile) -> list[RepoFile]:
    """All shards of a split model (the primary alone when it is not split)."""
    info = split_info(primary.path)
    if info is None or info.count <= 1:
        return [primary]
    return [
        file
        for file in files
        if (other := split_info(file.path))
        and (other.prefix, other.count) == (info.prefix, info.count)
    ]


def find_best_mmproj(files: list[RepoFile], model_path: str) -> RepoFile | None:
    """The projector for a model, as llama-server picks it: in the deepest folder the model's
    path shares, then with the quant bits nearest the model's."""
    model_dirs = model_path.split("/")[:-1]
    model_bits = _quant_bits(model_path)
    best: tuple[int, int] | None = None
    chosen = None
    for file in files:
        if not file.path.endswith(".gguf") or "mmproj" not in file.path:
            continue
        dirs = file.path.split("/")[:-1]
        if dirs != model_dirs[: len(dirs)]:
            continue  # not in a folder on the model's own path
        rank = (-len(dirs), abs(_quant_bits(file.path) - model_bits))
        if best is None or rank < best:
            best, chosen = rank, file
    return chosen


def _tag_of(path: str) -> str:
    info = split_info(path)
    return info.tag if info else ""


def _quant_bits(path: str) -> int:
    info = split_info(path)
    digits = re.search(r"\d+", info.tag) if info else None
    return int(digits[0]) if digits else 0


@dataclass(frozen=True)
class CachedModel:
    id: str  # user/repo:TAG
    path: str
    mmproj: str | None


def list_cached_models(cache_dir: str | Path) -> list[CachedModel]:
    """`user/repo:TAG` for each first shard with a tag, as llama-server's router lists them."""
    files = cached_files(cache_dir)
    by_repo: dict[str, list[RepoFile]] = {}
    for file in files:
        by_repo.setdefault(file.repo, []).append(file)
    models: dict[str, CachedModel] = {}
    for file in files:
        info = split_info(file.path)
        if info is None or info.index != 1 or not info.tag:
            continue
        if any(word in info.prefix for word in LISTED_SIDECARS):
            continue
        model_id = f"{file.repo}:{info.tag}"
        if model_id not in models:
            model = resolve_in(by_repo[file.repo], info.tag, None)
            if model is not None:
                models[model_id] = CachedModel(model_id, *model)
    return list(models.values())


def resolve_cached(
    cache_dir: str | Path, name: str, hf_file: str | None = None
) -> tuple[str, str | None] | None:
    """(model path, mmproj path) of `user/repo[:TAG]` (or its `hf_file`) in the cache, or None."""
    repo, tag = split_repo_tag(name)
    return resolve_in(cached_files(cache_dir, repo), tag, hf_file)


def resolve_in(
    files: list[RepoFile], tag: str, hf_file: str | None
) -> tuple[str, str | None] | None:
    if hf_file:
        primary = next((file for file in files if file.path == hf_file), None)
    else:
        primary = find_best_model(files, tag)
    if primary is None or not all(shard.local.exists() for shard in shards_of(files, primary)):
        return None
    mmproj = find_best_mmproj(files, primary.path)
    return str(primary.local), str(mmproj.local) if mmproj else None


def is_hub_path(cache_dir: str | Path, path: str) -> bool:
    """Whether a model file lies in a repo snapshot of this cache dir."""
    try:
        parts = Path(os.path.abspath(path)).relative_to(os.path.abspath(cache_dir)).parts
    except ValueError:
        return False
    return len(parts) > 3 and parts[0].startswith(REPO_PREFIX) and parts[1] == "snapshots"


def remove_cached(cache_dir: str | Path, model_id: str) -> bool:
    """Remove `user/repo:TAG`'s snapshot entries, then the blobs nothing else points at
    (llama-server's common_download_remove); True if anything was removed."""
    repo, tag = split_repo_tag(model_id)
    files = [
        file
        for file in cached_files(cache_dir, repo)
        if (info := split_info(file.path)) and info.tag == tag.upper()
    ]
    blobs = {_blob_of(file.local) for file in files if file.local.is_symlink()}
    for file in files:
        file.local.unlink(missing_ok=True)
    still_used = {_blob_of(file.local) for file in cached_files(cache_dir, repo)}
    for blob in blobs - still_used:
        blob.unlink(missing_ok=True)
    return bool(files)


def _blob_of(link: Path) -> Path:
    return Path(os.path.normpath(link.parent / os.readlink(link))) if link.is_symlink() else link

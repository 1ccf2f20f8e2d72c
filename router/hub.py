"""What to fetch for `user/repo[:TAG]` from a Hugging Face compatible hub, and where it goes.

The same questions llama-server asks (common/hf-cache.cpp): the commit of `main` from
`/api/models/<repo>/refs`, that commit's file list from `/api/models/<repo>/tree/<commit>`, then
each file from `<repo>/resolve/<commit>/<path>` into `blobs/<oid>` of the repo's cache folder,
linked from `snapshots/<commit>/<path>`. A repo with a `preset.ini` at its root is a remote preset:
only that file is fetched.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote

import requests

from router import hf_cache
from router.hf_cache import RepoFile
from workers.download import DownloadFile, DownloadJob, HubRef
from workers.errors import ApiError

DEFAULT_ENDPOINT = "https://huggingface.co"
VALIDATION_FAILED = "model validation failed, unable to download"
PRESET_FILE = "preset.ini"
# What llama-server names a file while it grows: either server resumes what the other began.
IN_PROGRESS = ".downloadInProgress"
_OID = re.compile(r"^([0-9a-fA-F]{40}|[0-9a-fA-F]{64})$")
_COMMIT = re.compile(r"^[0-9a-fA-F]{40}$")
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")


def endpoint() -> str:
    """`$MODEL_ENDPOINT`, else `$HF_ENDPOINT` (as llama-server reads them)."""
    chosen = os.environ.get("MODEL_ENDPOINT") or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT
    return chosen.rstrip("/")


def token() -> str | None:
    return os.environ.get("HF_TOKEN") or None


@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int | None
    oid: str | None


@dataclass(frozen=True)
class HubPlan:
    job: DownloadJob
    preset: str | None  # the local path of the repo's preset.ini, for a remote preset


def plan(name: str, hf_file: str | None, cache_dir: str) -> HubPlan:
    """The download job for `user/repo[:TAG]` (or its `hf_file`): the model's GGUF with all its
    shards and a projector if the repo has one; or the repo's preset.ini. Blocking."""
    try:
        repo, tag = hf_cache.split_repo_tag(name)
    except hf_cache.CacheError as error:
        raise ApiError(400, f"invalid model name {name!r}") from error
    auth = token()
    commit = _main_commit(repo, auth)
    listing = _listing(repo, commit, auth)
    folder = hf_cache.repo_folder(cache_dir, repo)
    snapshot = folder / "snapshots" / commit
    by_path = {item.path: item for item in listing}
    files = [RepoFile(repo, item.path, snapshot / item.path) for item in listing]
    ref = HubRef(str(folder / "refs" / "main"), commit)

    def job(model_id: str, chosen: list[RepoFile]) -> DownloadJob:
        downloads = [_download(repo, commit, folder, by_path[file.path]) for file in chosen]
        return DownloadJob(model_id, str(folder), downloads, auth, ref)

    if PRESET_FILE in by_path:
        preset = next(file for file in files if file.path == PRESET_FILE)
        return HubPlan(job(f"{repo}:{PRESET_FILE}", [preset]), str(preset.local))
    if hf_file:
        primary = next((file for file in files if file.path == hf_file), None)
        if primary is None:
            raise ApiError(400, f"{VALIDATION_FAILED}: no file {hf_file} in {repo}")
    else:
        primary = hf_cache.find_best_model(files, tag)
        if primary is None:
            wanted = tag or " or ".join(hf_cache.DEFAULT_TAGS)
            raise ApiError(400, f"{VALIDATION_FAILED}: no {wanted} GGUF file in {repo}")
    chosen = hf_cache.shards_of(files, primary)
    mmproj = hf_cache.find_best_mmproj(files, primary.path)
    info = hf_cache.split_info(primary.path)
    # the id both servers will list it by (none for a file whose name ends in no quant tag)
    found_tag = info.tag if info and info.tag else tag.upper()
    model_id = f"{repo}:{found_tag}" if found_tag else repo
    return HubPlan(job(model_id, chosen + ([mmproj] if mmproj else [])), None)


def _download(repo: str, commit: str, folder: Path, item: RemoteFile) -> DownloadFile:
    link = folder / "snapshots" / commit / item.path
    # A file the hub gives no oid for goes straight to its snapshot entry (llama-server too).
    target = folder / "blobs" / item.oid if item.oid else link
    return DownloadFile(
        url=f"{endpoint()}/{repo}/resolve/{commit}/{quote(item.path)}",
        path=str(target),
        partial=str(target) + IN_PROGRESS,
        size=item.size,
        sha256=item.oid.lower() if item.oid and _SHA256.match(item.oid) else None,
        link=str(link) if item.oid else None,
    )


def _get_json(address: str, auth: str | None) -> Any:
    headers = {"Authorization": f"Bearer {auth}"} if auth else {}
    try:
        reply = requests.get(address, headers=headers, timeout=30)
    except requests.RequestException as error:
        raise ApiError(400, f"{VALIDATION_FAILED}: {error}") from error
    if reply.status_code != 200:
        raise ApiError(400, f"{VALIDATION_FAILED}: the hub answered {reply.status_code}")
    try:
        return reply.json()
    except ValueError as error:
        raise ApiError(400, f"{VALIDATION_FAILED}: the hub's answer is not JSON") from error


def _main_commit(repo: str, auth: str | None) -> str:
    """The commit of `main`, else of the first branch listed."""
    refs = _get_json(f"{endpoint()}/api/models/{repo}/refs", auth)
    branches = refs.get("branches") if isinstance(refs, dict) else None
    commits = [
        (str(branch.get("name")), str(branch.get("targetCommit")))
        for branch in branches or []
        if isinstance(branch, dict) and _COMMIT.match(str(branch.get("targetCommit")))
    ]
    if not commits:
        raise ApiError(400, f"{VALIDATION_FAILED}: no branch of {repo} on the hub")
    return next((commit for name, commit in commits if name == "main"), commits[0][1])


def _listing(repo: str, commit: str, auth: str | None) -> list[RemoteFile]:
    listing = _get_json(f"{endpoint()}/api/models/{repo}/tree/{commit}?recursive=true", auth)
    if not isinstance(listing, list):
        raise ApiError(400, f"{VALIDATION_FAILED}: unexpected listing")
    files = []
    for item in listing:
        if not isinstance(item, dict) or item.get("type") != "file":
            continue
        path = str(item.get("path", ""))
        parts = PurePosixPath(path).parts
        if not path or path.startswith("/") or ".." in parts:
            continue  # never a path outside the snapshot
        lfs = item.get("lfs") if isinstance(item.get("lfs"), dict) else None
        oid = (lfs or item).get("oid")
        if oid is not None and not _OID.match(str(oid)):
            continue
        size = (lfs or item).get("size")
        files.append(RemoteFile(path, size if isinstance(size, int) else None, oid))
    return files

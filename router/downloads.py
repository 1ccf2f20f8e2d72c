"""Model downloads: resolve `user/repo:QUANT` on a Hugging Face compatible hub, then fetch the
files in a download worker process that reports over its pipe. A download takes no model slot.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import re
import signal
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlparse

import requests

from router.catalog import CACHE_MODELS_DIR
from router.processes import signal_group
from workers import download as download_worker
from workers.download import DownloadFile, DownloadJob, Failed, Finished, Progress, report_decoder
from workers.errors import ApiError

log = logging.getLogger("llama-router")

DEFAULT_ENDPOINT = "https://huggingface.co"
DEFAULT_QUANT = "Q4_K_M"
PROGRESS_EVENT_SECONDS = 0.1
_REPO_NAME = re.compile(
    r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}(:[A-Za-z0-9._-]{1,32})?$"
)
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
_SHARD = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$", re.IGNORECASE)
_SPAWN = multiprocessing.get_context("spawn")
VALIDATION_FAILED = "model validation failed, unable to download"

Publisher = Any  # (model, event, data) -> None


def check_name(name: str, direct: bool) -> None:
    """Names from clients reach the file system: only plain, bounded spellings pass."""
    pattern = _PLAIN_NAME if direct else _REPO_NAME
    if not name or ".." in name or not pattern.match(name):
        raise ApiError(400, f"invalid model name {name!r}")


def folder_for(cache_dir: str, model_id: str) -> Path:
    safe = model_id.replace("/", "--").replace(":", "--")
    return Path(cache_dir) / CACHE_MODELS_DIR / safe


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", DEFAULT_ENDPOINT).rstrip("/")


def resolve(name: str, url: str | None, cache_dir: str) -> DownloadJob:
    """What to fetch for a POST /models body (blocking: run it off the event loop)."""
    token = os.environ.get("HF_TOKEN") or None
    if url is not None:
        check_name(name, direct=True)
        parsed = urlparse(url)
        filename = Path(parsed.path).name
        if parsed.scheme not in ("http", "https") or not filename.lower().endswith(".gguf"):
            raise ApiError(400, "url must be an http(s) address of a .gguf file")
        check_name(filename, direct=True)
        files = [DownloadFile(url=url, name=filename)]
        return DownloadJob(name, str(folder_for(cache_dir, name)), files, token)
    check_name(name, direct=False)
    repo, _, quant = name.partition(":")
    model_id = f"{repo}:{(quant or DEFAULT_QUANT).upper()}"
    files = pick_files(list_repo(repo, token), repo, (quant or DEFAULT_QUANT).upper())
    return DownloadJob(model_id, str(folder_for(cache_dir, model_id)), files, token)


def list_repo(repo: str, token: str | None) -> list[dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    address = f"{hub_endpoint()}/api/models/{repo}/tree/main?recursive=true"
    try:
        reply = requests.get(address, headers=headers, timeout=30)
    except requests.RequestException as error:
        raise ApiError(400, f"{VALIDATION_FAILED}: {error}") from error
    if reply.status_code != 200:
        raise ApiError(400, f"{VALIDATION_FAILED}: the hub answered {reply.status_code}")
    listing = reply.json()
    if not isinstance(listing, list):
        raise ApiError(400, f"{VALIDATION_FAILED}: unexpected listing")
    return listing


def pick_files(listing: list[dict[str, Any]], repo: str, quant: str) -> list[DownloadFile]:
    """The GGUF for `quant` (all its shards) and an mmproj projector if the repo has one."""
    ggufs = sorted(
        (entry for entry in listing if str(entry.get("path", "")).lower().endswith(".gguf")),
        key=lambda entry: str(entry["path"]),
    )
    tag = re.compile(rf"(?<![A-Za-z0-9]){re.escape(quant)}(?![A-Za-z0-9])", re.IGNORECASE)
    weights = [e for e in ggufs if "mmproj" not in e["path"].lower() and tag.search(e["path"])]
    if not weights:
        raise ApiError(400, f"{VALIDATION_FAILED}: no {quant} file in {repo}")
    first = weights[0]
    shard = _SHARD.search(first["path"])
    if shard:
        stem = first["path"][: shard.start()]
        chosen = [e for e in weights if e["path"].startswith(stem) and _SHARD.search(e["path"])]
    else:
        chosen = [first]
    projectors = [e for e in ggufs if "mmproj" in e["path"].lower()]
    return [_file(repo, entry) for entry in chosen + projectors[:1]]


def _file(repo: str, entry: dict[str, Any]) -> DownloadFile:
    path = str(entry["path"])
    lfs = entry.get("lfs") or {}
    return DownloadFile(
        url=f"{hub_endpoint()}/{repo}/resolve/main/{quote(path)}",
        name=Path(path).name,
        size=entry.get("size"),
        sha256=lfs.get("oid") or lfs.get("sha256"),
    )


@dataclass(eq=False)
class Download:
    job: DownloadJob
    process: multiprocessing.process.BaseProcess
    conn: Connection
    status: str = "downloading"
    progress: dict[str, dict[str, int]] = field(default_factory=dict)
    last_event: float = 0.0

    @property
    def model_id(self) -> str:
        return self.job.model_id


class Downloads:
    def __init__(self, publish: Publisher) -> None:
        self._publish = publish
        self._active: dict[str, Download] = {}

    def entries(self) -> list[Download]:
        return [d for d in self._active.values() if d.status != "failed"]

    def start(self, job: DownloadJob) -> None:
        current = self._active.get(job.model_id)
        if current is not None and current.status != "failed":
            raise ApiError(400, f"model '{job.model_id}' already exists")
        parent, child = _SPAWN.Pipe(duplex=False)
        process = _SPAWN.Process(
            target=download_worker.run,
            args=(job, child),
            name=f"llama-router-download:{job.model_id}",
        )
        process.start()
        child.close()
        download = Download(job, process, parent)
        self._active[job.model_id] = download
        loop = asyncio.get_running_loop()
        loop.add_reader(parent.fileno(), self._read, download)
        loop.add_reader(process.sentinel, self._reap, download)
        log.info("downloading %s into %s", job.model_id, job.folder)
        self._publish(job.model_id, "model_status", {"status": "downloading"})

    def _read(self, download: Download) -> None:
        try:
            while download.conn.poll():
                self._on_report(download, report_decoder.decode(download.conn.recv_bytes()))
        except (EOFError, OSError):
            asyncio.get_running_loop().remove_reader(download.conn.fileno())

    def _on_report(self, download: Download, report: Any) -> None:
        match report:
            case Progress():
                download.progress[report.url] = {"done": report.done, "total": report.total}
                now = time.monotonic()
                complete = report.done >= report.total
                if complete or now - download.last_event >= PROGRESS_EVENT_SECONDS:
                    download.last_event = now
                    data = {"progress": dict(download.progress)}
                    self._publish(download.model_id, "download_progress", data)
            case Finished():
                download.status = "downloaded"
                log.info("downloaded %s", download.model_id)
                self._publish(download.model_id, "download_finished")
            case Failed():
                self._fail(download, report.reason)

    def _fail(self, download: Download, reason: str) -> None:
        if download.status != "downloading":
            return
        download.status = "failed"
        log.warning("download of %s failed: %s", download.model_id, reason)
        self._publish(download.model_id, "download_failed", {"message": reason})

    def _reap(self, download: Download) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(download.process.sentinel)
        if not download.conn.closed:
            self._read(download)
            loop.remove_reader(download.conn.fileno())
            download.conn.close()
        download.process.join(timeout=1)
        self._fail(download, "download stopped" if download.process.exitcode else "no result")

    def cancel(self, model_id: str) -> bool:
        """Stop a running download; its partial files stay for a resume."""
        download = self._active.get(model_id)
        if download is None or download.status != "downloading":
            return False
        self._fail(download, "cancelled")
        if download.process.pid is not None:
            signal_group(download.process.pid, signal.SIGTERM)
        return True

    def take_finished(self) -> list[Download]:
        finished = [d for d in self._active.values() if d.status == "downloaded"]
        for download in finished:
            del self._active[download.model_id]
        return finished

    def shutdown(self) -> None:
        for download in list(self._active.values()):
            if download.status == "downloading":
                self.cancel(download.model_id)
        for download in self._active.values():
            download.process.join(timeout=5)

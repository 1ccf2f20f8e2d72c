"""Download worker: fetches a model's files into the cache, resuming and verifying them.

A file grows under its `partial` name and is resumed with an HTTP Range request; once complete
its size (and the hub's sha256, when known) is checked before it is renamed into place, so a
half or corrupt file is never listed as a model. A hub download then links each file into its
repo snapshot and points `refs/main` at that commit, as llama-server does, so that both servers
list it. The same code serves `llama-router pull` and the start-up download of `-hf`.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import msgspec
import requests
import urllib3

READ_BYTES = 1 << 20  # at most: read1 returns what has arrived, it does not wait for this much
PROGRESS_INTERVAL = 0.1
MANIFEST = "manifest.json"


class DownloadFile(msgspec.Struct, frozen=True):
    url: str
    path: str  # the finished file
    partial: str  # where it grows until it is whole and verified
    size: int | None = None
    sha256: str | None = None
    link: str | None = None  # hub layout: its snapshot entry, a relative symlink to `path`


class HubRef(msgspec.Struct, frozen=True):
    path: str  # <repo folder>/refs/main
    commit: str


class DownloadJob(msgspec.Struct, frozen=True):
    model_id: str
    folder: str  # the model's own folder (direct url) or its repo's folder (hub layout)
    files: list[DownloadFile]
    token: str | None = None
    ref: HubRef | None = None  # hub layout; without it the folder gets a manifest


class _Report(msgspec.Struct, frozen=True, tag_field="kind"):
    pass


class Progress(_Report, tag="progress", frozen=True):
    url: str
    done: int
    total: int


class Finished(_Report, tag="finished", frozen=True):
    pass


class Failed(_Report, tag="failed", frozen=True):
    reason: str


Report = Progress | Finished | Failed
report_decoder = msgspec.msgpack.Decoder(Report)


class DownloadError(Exception):
    pass


def download(job: DownloadJob, on_progress: Callable[[Progress], None]) -> None:
    """Fetch every file of `job`, then make the model visible: snapshot links and the ref (hub
    layout), or the manifest of its folder. Nothing is listed before every file is whole."""
    for file in job.files:
        fetch(file, job.token, on_progress)
    if job.ref is None:
        manifest = {"id": job.model_id, "files": [Path(file.path).name for file in job.files]}
        (Path(job.folder) / MANIFEST).write_text(json.dumps(manifest))
        return
    for file in job.files:
        if file.link:
            _link(Path(file.path), Path(file.link))
    _write_atomically(Path(job.ref.path), job.ref.commit)


def fetch(file: DownloadFile, token: str | None, on_progress: Callable[[Progress], None]) -> None:
    target = Path(file.path)
    if file.link and Path(file.link).exists():
        return
    if target.exists() and (file.size is None or target.stat().st_size == file.size):
        return
    partial = Path(file.partial)
    partial.parent.mkdir(parents=True, exist_ok=True)
    have = partial.stat().st_size if partial.exists() else 0
    digest = None
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        with requests.get(file.url, headers=headers, stream=True, timeout=60) as reply:
            if reply.status_code == 416 and file.size == have:
                pass  # already whole: only the rename is left
            else:
                if reply.status_code not in (200, 206):
                    raise DownloadError(f"{file.url} answered HTTP {reply.status_code}")
                if reply.status_code == 200:
                    have = 0  # the server ignored the range: start over
                total = file.size or have + int(reply.headers.get("content-length", 0))
                digest = _digest_of(partial, have)
                _receive(reply, partial, have, total, file.url, digest, on_progress)
    except requests.RequestException as error:
        raise DownloadError(f"{file.url}: {error}") from error
    except OSError as error:
        raise DownloadError(f"cannot write {partial}: {error}") from error
    _verify(partial, file, digest)
    partial.rename(target)


def _digest_of(partial: Path, length: int) -> Any:
    """sha256 of the bytes a resumed download already has; the rest is hashed as it arrives."""
    digest = hashlib.sha256()
    if length:
        with open(partial, "rb") as data:
            while block := data.read(min(READ_BYTES, length)):
                digest.update(block)
                length -= len(block)
    return digest


def _receive(
    reply: requests.Response,
    partial: Path,
    have: int,
    total: int,
    url: str,
    digest: Any,
    on_progress: Callable[[Progress], None],
) -> None:
    last = 0.0
    with open(partial, "ab" if have else "wb") as out:
        try:
            # read1 hands over whatever has arrived, so bytes before a dropped connection are
            # kept (iter_content would discard a partly filled chunk and fetch it again)
            while chunk := reply.raw.read1(READ_BYTES):
                out.write(chunk)
                digest.update(chunk)
                have += len(chunk)
                now = time.monotonic()
                if now - last >= PROGRESS_INTERVAL:
                    last = now
                    on_progress(Progress(url, have, total))
        except (requests.RequestException, urllib3.exceptions.HTTPError):
            pass  # reported below with the byte count; what arrived stays for a resume
    on_progress(Progress(url, have, total))
    if total and have < total:
        raise DownloadError(f"{url}: connection closed after {have} of {total} bytes")


def _verify(partial: Path, file: DownloadFile, digest: Any) -> None:
    size = partial.stat().st_size
    name = file.url.rsplit("/", 1)[-1]
    if file.size is not None and size != file.size:
        raise DownloadError(f"{name}: size {size} instead of {file.size}")
    if file.sha256:
        if digest is None:
            digest = _digest_of(partial, size)
        if digest.hexdigest() != file.sha256.lower():
            partial.unlink()
            raise DownloadError(f"{name}: sha256 mismatch (expected {file.sha256})")


def _link(blob: Path, entry: Path) -> None:
    """The snapshot entry as a relative symlink to its blob; where links cannot be made, the blob
    itself moves there (llama-server's fallback too)."""
    if entry.exists():
        return
    if entry.is_symlink():
        entry.unlink()  # a link whose blob is gone: the blob is back now
    entry.parent.mkdir(parents=True, exist_ok=True)
    try:
        entry.symlink_to(os.path.relpath(blob, entry.parent))
    except OSError:
        os.replace(blob, entry)


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def run(job: DownloadJob, conn: Connection) -> None:
    """Process entry point: report progress over the pipe, then Finished or Failed."""
    os.setpgrp()
    encode = msgspec.msgpack.Encoder().encode

    def send(report: Report) -> None:
        conn.send_bytes(encode(report))

    try:
        download(job, send)
    except DownloadError as error:
        send(Failed(str(error)))
        sys.exit(1)
    except Exception as error:  # disk full and friends: still a readable reason
        send(Failed(f"{type(error).__name__}: {error}"))
        sys.exit(1)
    send(Finished())

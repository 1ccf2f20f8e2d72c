"""Download worker: fetches a model's files into the cache, resuming and verifying them.

A file is written under `<name>.partial` and resumed with an HTTP Range request; once complete
its size (and the hub's sha256, when known) is checked before it is renamed into place, so a
half or corrupt file is never listed as a model. The same code serves `llama-router pull`.
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
    name: str
    size: int | None = None
    sha256: str | None = None


class DownloadJob(msgspec.Struct, frozen=True):
    model_id: str
    folder: str
    files: list[DownloadFile]
    token: str | None = None


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
    """Fetch every file of `job` into its folder and write the manifest that lists it."""
    folder = Path(job.folder)
    folder.mkdir(parents=True, exist_ok=True)
    for file in job.files:
        fetch(file, folder, job.token, on_progress)
    manifest = {"id": job.model_id, "files": [file.name for file in job.files]}
    (folder / MANIFEST).write_text(json.dumps(manifest))


def fetch(
    file: DownloadFile, folder: Path, token: str | None, on_progress: Callable[[Progress], None]
) -> None:
    target = folder / file.name
    if target.exists() and (file.size is None or target.stat().st_size == file.size):
        return
    partial = folder / (file.name + ".partial")
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
    if file.size is not None and size != file.size:
        raise DownloadError(f"{file.name}: size {size} instead of {file.size}")
    if file.sha256:
        if digest is None:
            digest = _digest_of(partial, size)
        if digest.hexdigest() != file.sha256.lower():
            partial.unlink()
            raise DownloadError(f"{file.name}: sha256 mismatch (expected {file.sha256})")


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

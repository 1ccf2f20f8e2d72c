"""Model downloads: resolve `user/repo:QUANT` on a Hugging Face compatible hub (router/hub.py),
then fetch the files in a download worker process that reports over its pipe. A download takes
no model slot.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import re
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from tqdm import tqdm

from router import hub
from router.catalog import CACHE_MODELS_DIR
from router.control.processes import signal_group
from router.messages import read_when_ready
from workers import download as download_worker
from workers.download import DownloadFile, DownloadJob, Failed, Finished, Progress, report_decoder
from workers.errors import ApiError

log = logging.getLogger("llama-router")

PROGRESS_EVENT_SECONDS = 0.1
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
_SPAWN = multiprocessing.get_context("spawn")

Publisher = Any  # (model, event, data) -> None


def check_name(name: str) -> None:
    """A direct download's name becomes a folder name: only plain, bounded spellings pass."""
    if not name or ".." in name or not _PLAIN_NAME.match(name):
        raise ApiError(400, f"invalid model name {name!r}")


def folder_for(cache_dir: str, model_id: str) -> Path:
    safe = model_id.replace("/", "--").replace(":", "--")
    return Path(cache_dir) / CACHE_MODELS_DIR / safe


def resolve(name: str, url: str | None, cache_dir: str) -> DownloadJob:
    """What to fetch for a POST /models body (blocking: run it off the event loop): a hub
    model into the hub layout llama-server shares, a direct url into a folder of its own."""
    if url is None:
        found = hub.plan(name, None, cache_dir)
        if found.preset is not None:
            raise ApiError(400, f"{hub.VALIDATION_FAILED}: {name} is a preset repo, not a model")
        return found.job
    check_name(name)
    parsed = urlparse(url)
    filename = Path(parsed.path).name
    if parsed.scheme not in ("http", "https") or not filename.lower().endswith(".gguf"):
        raise ApiError(400, "url must be an http(s) address of a .gguf file")
    check_name(filename)
    folder = folder_for(cache_dir, name)
    target = folder / filename
    file = DownloadFile(url=url, path=str(target), partial=f"{target}.partial")
    return DownloadJob(name, str(folder), [file], hub.token())


def download_with_bars(job: DownloadJob) -> None:
    """Download in this process with a progress bar per file (`pull`, the `-hf` start-up)."""
    bars: dict[str, tqdm] = {}

    def show(progress: Progress) -> None:
        bar = bars.get(progress.url)
        if bar is None:
            name = progress.url.rsplit("/", 1)[-1]
            bar = bars[progress.url] = tqdm(
                total=progress.total, unit="B", unit_scale=True, desc=name
            )
        bar.update(progress.done - bar.n)

    try:
        download_worker.download(job, show)
    finally:
        for bar in bars.values():
            bar.close()


@dataclass(eq=False)
class Download:
    job: DownloadJob
    process: multiprocessing.process.BaseProcess
    conn: Connection
    status: str = "downloading"
    progress: dict[str, dict[str, int]] = field(default_factory=dict)
    last_event: float = 0.0
    reason: str = ""  # why it failed
    ended: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def model_id(self) -> str:
        return self.job.model_id


class Downloads:
    def __init__(self, publish: Publisher, count_bytes: Callable[[int], None]) -> None:
        self._publish = publish
        self._count_bytes = count_bytes
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
        read_when_ready(loop, parent, lambda: self._read(download))
        loop.add_reader(process.sentinel, self._reap, download)
        log.info("downloading %s into %s", job.model_id, job.folder)
        self._publish(job.model_id, "model_status", {"status": "downloading"})

    async def fetch(self, job: DownloadJob) -> None:
        """Start `job`, or join the same download already under way, and wait for its end."""
        download = self._active.get(job.model_id)
        if download is None or download.status == "failed":
            self.start(job)
            download = self._active[job.model_id]
        await download.ended.wait()
        if download.status == "failed":
            raise ApiError(500, f"cannot download {job.model_id}: {download.reason}")

    def _read(self, download: Download) -> None:
        try:
            while download.conn.poll():
                self._on_report(download, report_decoder.decode(download.conn.recv_bytes()))
        except (EOFError, OSError):
            asyncio.get_running_loop().remove_reader(download.conn.fileno())

    def _on_report(self, download: Download, report: Any) -> None:
        match report:
            case Progress():
                before = download.progress.get(report.url, {}).get("done", 0)
                self._count_bytes(max(0, report.done - before))
                download.progress[report.url] = {"done": report.done, "total": report.total}
                now = time.monotonic()
                complete = report.done >= report.total
                if complete or now - download.last_event >= PROGRESS_EVENT_SECONDS:
                    download.last_event = now
                    data = {"progress": dict(download.progress)}
                    self._publish(download.model_id, "download_progress", data)
            case Finished():
                download.status = "downloaded"
                download.ended.set()
                log.info("downloaded %s", download.model_id)
                self._publish(download.model_id, "download_finished")
            case Failed():
                self._fail(download, report.reason)

    def _fail(self, download: Download, reason: str) -> None:
        if download.status != "downloading":
            return
        download.status = "failed"
        download.reason = reason
        download.ended.set()
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

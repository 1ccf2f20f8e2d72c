"""`make bench ARGS=metrics`: what `/metrics` and the web page cost.

The time to scrape `/metrics` with ten models loaded; a Gemma stream's tokens per second alone
and while a client scrapes `/metrics` ten times a second (a hundred times Prometheus's usual
pace) and without a pause; and the time to fetch the web page with every file it loads.
"""

from __future__ import annotations

import re
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import requests

from bench.measure import percentile, streaming_tokens_per_second
from bench.targets import Target

_LINKED = re.compile(rb'(?:src|href)="/?(web/[^"]+)"')
_IMPORTED = re.compile(rb'from\s*["\']\./([^"\']+)["\']')


def _millis(samples: list[float]) -> dict[str, float]:
    return {"p50_ms": statistics.median(samples) * 1e3, "p90_ms": percentile(samples, 0.9) * 1e3}


def scrape_cost(url: str, models: list[str], scrapes: int) -> dict[str, Any]:
    session = requests.Session()
    for model in models:
        session.post(url + "/models/load", json={"model": model}, timeout=60)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        entries = session.get(url + "/models", timeout=10).json()["data"]
        if sum(entry["status"]["value"] == "loaded" for entry in entries) >= len(models):
            break
        time.sleep(0.1)
    samples = []
    size = 0
    for _ in range(scrapes):
        started = time.perf_counter()
        page = session.get(url + "/metrics", timeout=10)
        samples.append(time.perf_counter() - started)
        size = len(page.content)
    return {"models_loaded": len(models), "page_bytes": size, **_millis(samples)}


def tokens_while_scraped(
    url: str, model: str, tokens: int, eos: list[int], pause: float
) -> dict[str, Any]:
    """A stream's tokens per second while another client scrapes `/metrics`, `pause` seconds
    apart (0: without a pause), against the same stream alone."""
    alone = streaming_tokens_per_second(url, model, tokens, eos)
    stop = threading.Event()
    scrapes = 0

    def scrape() -> None:
        nonlocal scrapes
        session = requests.Session()
        while not stop.wait(pause):
            session.get(url + "/metrics", timeout=10)
            scrapes += 1

    scraper = threading.Thread(target=scrape)
    scraper.start()
    started = time.perf_counter()
    try:
        scraped = streaming_tokens_per_second(url, model, tokens, eos)
    finally:
        stop.set()
        scraper.join()
    return {
        "scrapes_per_s": scrapes / (time.perf_counter() - started),
        "tokens_per_s_alone": alone,
        "tokens_per_s_scraped": scraped,
        "ratio": scraped / alone,
    }


def page_load(url: str, times: int) -> dict[str, Any]:
    """The page and every file it names (the module's imports too), fetched one after another
    on a fresh connection, as a browser with an empty cache would at least."""
    samples = []
    files = 0
    size = 0
    for _ in range(times):
        started = time.perf_counter()
        with requests.Session() as session:
            fetched = [session.get(url + "/", timeout=10).content]
            for path in [m.decode() for m in _LINKED.findall(fetched[0])]:
                fetched.append(session.get(f"{url}/{path}", timeout=10).content)
                folder = path.rsplit("/", 1)[0]
                for module in _IMPORTED.findall(fetched[-1]) if path.endswith(".js") else []:
                    fetched.append(session.get(f"{url}/{folder}/{module.decode()}").content)
        samples.append(time.perf_counter() - started)
        files, size = len(fetched), sum(len(content) for content in fetched)
    return {"files": files, "bytes": size, **_millis(samples)}


def run(
    target: Target, log_dir: Path, models: list[str], tokens: int, eos: list[int]
) -> dict[str, Any]:
    """Against llama-router only: llama-server's router has no whole-router page or web page
    of its own to compare with."""
    target.start(log_dir)
    try:
        return {
            "scrape": scrape_cost(target.url, models, 200),
            "stream_scraped_10_per_s": tokens_while_scraped(target.url, "gemma", tokens, eos, 0.1),
            "stream_scraped_without_pause": tokens_while_scraped(
                target.url, "gemma", tokens, eos, 0.0
            ),
            "page": page_load(target.url, 20),
        }
    finally:
        target.stop()

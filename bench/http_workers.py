"""`make bench ARGS=http-workers`: what several HTTP processes (`--http-workers N`) buy and cost.

One router per N = 1, 2 and 4 on the tiny models, `--runs` times, alternating: requests per
second of 32 clients sending short completions; replays per second of a finished ~32 KB session
at 8 clients; the warm latency of one client on the main HTTP process and on another one; and the
time a live stream's events take to reach a follower on another HTTP process, against a follower
on the main one, both following the same session at once.

Every client keeps its own connection: the kernel spreads new connections over the processes,
and each `GET /health` answer names the process that served it (`X-Llama-Router-Pid`), so a
client that must sit on a given process opens connections until one lands there.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from bench import streams
from bench.measure import completion, spread, summary
from bench.targets import Target

WORKERS = (1, 2, 4)
MODEL = "tiny-0"
SLOW = "slow"  # a few hundred tokens/s: a stream that lasts long enough to be followed live
CLIENTS = 32
REPLAY_CLIENTS = 8
SESSION_TOKENS = 160  # about 32 KB of events on the tiny models
SECONDS = 5.0  # of each throughput measure
FOLLOW_TOKENS = 1000  # about 2 s of events, 1.5 s of them live after the replay
PID_HEADER = "X-Llama-Router-Pid"
TRIES = 64  # connections opened at most to land one on a given process


class Ratio(NamedTuple):
    """A measure at N over a measure at N=1, and the feature's aim for it (none: shown only)."""

    workers: int
    measure: str
    baseline: str
    low: float = 0.0
    high: float = math.inf

    def aim(self) -> str:
        if self.low:
            return f">= {self.low}"
        return "" if self.high == math.inf else f"<= {self.high}"


RATIOS = [
    Ratio(2, "replays/s, 8 clients", "replays/s, 8 clients", low=1.3),
    Ratio(2, "warm p50 ms, main", "warm p50 ms, main", high=1.1),
    Ratio(2, "warm p50 ms, other", "warm p50 ms, main", high=1.1),  # the relay's cost
    Ratio(4, "replays/s, 8 clients", "replays/s, 8 clients"),
    Ratio(2, "requests/s, 32 clients", "requests/s, 32 clients"),
    Ratio(4, "requests/s, 32 clients", "requests/s, 32 clients"),
]


def workers_flags(workers: int) -> list[str]:
    """No flag for one process (the default), so that the baseline runs on any router."""
    return [] if workers == 1 else ["--http-workers", str(workers)]


class Client:
    """One keep-alive HTTP/1.1 connection spoken raw. `requests` costs more CPU per 32 KB replay
    than the router spends serving it (one client core at about 1,300 replays/s against a quarter
    of a core in the router), so with it the bench would measure itself."""

    def __init__(self, url: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.host = _host_port(url)[0]
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, url: str) -> Client:
        return cls(url, *await asyncio.open_connection(*_host_port(url)))

    @classmethod
    async def open_on(cls, url: str, main_pid: int, on_main: bool) -> Client:
        """A connection that the main HTTP process (or another one) serves: new connections land
        where the kernel puts them, so open them until one lands right."""
        for _ in range(TRIES):
            client = await cls.open(url)
            # A router that does not name the answering process has only the main one.
            if (await client.pid() in (None, main_pid)) == on_main:
                return client
            client.close()
        where = "the main HTTP process" if on_main else "an HTTP process other than the main one"
        raise RuntimeError(f"none of {TRIES} new connections landed on {where}")

    async def pid(self) -> int | None:
        head, _ = await self.request("GET", "/health")
        found = _PID.search(head)
        return int(found[1]) if found else None

    async def send(self, method: str, path: str, body: bytes = b"", extra: str = "") -> None:
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n{extra}"
        if body:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        self.writer.write(head.encode() + b"\r\n" + body)
        await self.writer.drain()

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[bytes, bytes]:
        """The head and the body of a 200 answer."""
        await self.send(method, path, body)
        head = await self.reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200 "):
            status = head.splitlines()[0].decode()
            raise RuntimeError(f"{method} {path} answered {status}")
        if length := _CONTENT_LENGTH.search(head):
            return head, await self.reader.readexactly(int(length[1]))
        chunks = []
        while size := int((await self.reader.readline()).split(b";")[0], 16):
            chunks.append(await self.reader.readexactly(size))
            await self.reader.readexactly(2)
        await self.reader.readline()  # the blank line after the last, empty chunk
        return head, b"".join(chunks)

    def close(self) -> None:
        self.writer.close()


_PID = re.compile(rb"(?i)\r\n" + PID_HEADER.encode() + rb": *(\d+)")
_CONTENT_LENGTH = re.compile(rb"(?i)\r\ncontent-length: *(\d+)")


def _host_port(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


async def _load(url: str, model: str) -> None:
    """The model loaded, so that no measure times its load."""
    client = await Client.open(url)
    await client.request("POST", "/v1/completions", json.dumps(completion(model)).encode())
    client.close()


async def processes_answering(url: str, connections: int) -> int:
    """How many HTTP processes `connections` new connections reached: a check that N are up."""
    clients = [await Client.open(url) for _ in range(connections)]
    pids = {await client.pid() for client in clients}
    for client in clients:
        client.close()
    return len(pids)


async def per_second(
    url: str, clients: int, seconds: float, method: str, path: str, body: bytes = b""
) -> float:
    """Answers per second to `clients` connections that send the same request back to back."""
    stop = time.perf_counter() + seconds

    async def client() -> int:
        connection = await Client.open(url)
        answered = 0
        while time.perf_counter() < stop:
            await connection.request(method, path, body)
            answered += 1
        connection.close()
        return answered

    started = time.perf_counter()
    answered = await asyncio.gather(*(client() for _ in range(clients)))
    return sum(answered) / (time.perf_counter() - started)


async def warm_latency(url: str, main_pid: int, on_main: bool, count: int) -> dict[str, float]:
    """One client on the main HTTP process (or another one), one short request at a time."""
    client = await Client.open_on(url, main_pid, on_main)
    latencies = await timed_completions(client, MODEL, count)
    client.close()
    return summary(latencies)


async def timed_completions(
    client: Client, model: str, count: int, latencies: list[float] | None = None
) -> list[float]:
    """Seconds each of `count` short completions took, one at a time, after one to warm up
    (added to `latencies` as they come)."""
    body = json.dumps(completion(model)).encode()
    await client.request("POST", "/v1/completions", body)
    latencies = [] if latencies is None else latencies
    for _ in range(count):
        started = time.perf_counter()
        await client.request("POST", "/v1/completions", body)
        latencies.append(time.perf_counter() - started)
    return latencies


async def _follow(client: Client, path: str, arrivals: dict[int, float]) -> None:
    """As `streams._read_events`, on a connection already open (the last request on it)."""
    await client.send("GET", path, extra="Connection: close\r\n")
    status = await client.reader.readline()
    if not status.startswith(b"HTTP/1.1 200 "):
        raise RuntimeError(f"GET {path} answered {status.decode().strip()}")
    async for line in client.reader:
        if line.startswith(b"id: "):
            arrivals[int(line[4:])] = time.perf_counter()
    client.close()


TAIL_PATH = "/v1/stream?conv_id=tail"


async def start_tail_session(url: str, tokens: int) -> tuple[asyncio.Task[None], dict[int, float]]:
    """The streamed session `tail` on the slow model (loaded), once its first event came: the
    task of its POST, and when each of its events reached the POST's client."""
    await _load(url, SLOW)
    body = json.dumps(completion(SLOW, tokens, stream=True, logit_bias={"2": -100})).encode()
    original: dict[int, float] = {}
    post = asyncio.create_task(streams._read_events(url, "/v1/completions", original, body))
    while not original:
        await asyncio.sleep(0.01)
    return post, original


async def follow_latency(url: str, main_pid: int, workers: int) -> dict[str, float]:
    """A streamed session followed at once from the main process and (N > 1) from another one:
    each follower's median delay after the POST client, and the other's delay after the main's,
    event by event."""
    await _load(url, SLOW)
    followers: dict[str, dict[int, float]] = {"main": {}}
    if workers > 1:
        followers["other"] = {}
    # Pinned before the session starts, so that no follower misses its first live events.
    clients = {name: await Client.open_on(url, main_pid, name == "main") for name in followers}
    post, original = await start_tail_session(url, FOLLOW_TOKENS)
    followed = time.perf_counter()
    await asyncio.gather(
        post, *(_follow(clients[name], TAIL_PATH, arrivals) for name, arrivals in followers.items())
    )
    live = [event for event, at in original.items() if at > followed + 0.5]  # replay caught up
    result = {
        f"follow ms, on {name}": 1000
        * statistics.median(
            arrivals[event] - original[event] for event in live if event in arrivals
        )
        for name, arrivals in followers.items()
    }
    if workers > 1:
        main, other = followers["main"], followers["other"]
        both = [event for event in live if event in main and event in other]
        result["follow ms, other - main"] = 1000 * statistics.median(
            other[event] - main[event] for event in both
        )
    return result


async def measure_one(url: str, main_pid: int, workers: int, count: int) -> dict[str, float]:
    result: dict[str, float] = {"HTTP processes seen": await processes_answering(url, CLIENTS)}
    short = json.dumps(completion(MODEL)).encode()
    await _load(url, MODEL)
    result["requests/s, 32 clients"] = await per_second(
        url, CLIENTS, SECONDS, "POST", "/v1/completions", short
    )
    size = await asyncio.to_thread(streams.make_session, url, "replayed", MODEL, SESSION_TOKENS)
    result["replayed session KB"] = size / 1024
    result["replays/s, 8 clients"] = await per_second(
        url, REPLAY_CLIENTS, SECONDS, "GET", "/v1/stream?conv_id=replayed"
    )
    for side in ("main", "other") if workers > 1 else ("main",):
        warm = await warm_latency(url, main_pid, side == "main", count)
        result[f"warm p50 ms, {side}"] = warm["p50_ms"]
        result[f"warm p99 ms, {side}"] = warm["p99_ms"]
    result.update(await follow_latency(url, main_pid, workers))
    return result


def run(
    make_target: Callable[[list[str]], Target], work: Path, runs: int, count: int
) -> dict[str, Any]:
    """Each N in turn, `runs` times; a router that fails (the flag missing, say) is reported and
    the other N go on."""
    figures: dict[int, list[dict[str, float]]] = {workers: [] for workers in WORKERS}
    failures: dict[int, str] = {}
    for _ in range(runs):
        for workers in WORKERS:
            target = make_target(workers_flags(workers))
            target = dataclasses.replace(target, name=f"llama-router-http-workers-{workers}")
            try:
                target.start(work)
                assert target.process is not None  # its pid is the main HTTP process's
                one = measure_one(target.url, target.process.pid, workers, count)
                figures[workers].append(asyncio.run(one))
            except Exception as error:
                failures[workers] = f"{type(error).__name__}: {error}"
            finally:
                target.stop()
    print(f"\n--http-workers N on tiny models: median of {runs} runs (min-max)")
    print(f"{'measure':28}" + "".join(f"{f'N={workers}':>22}" for workers in WORKERS))
    for key in dict.fromkeys(key for done in figures.values() for one in done for key in one):
        cells = [spread([one[key] for one in figures[n] if key in one]) for n in WORKERS]
        print(f"{key:28}" + "".join(f"{cell:>22}" for cell in cells))
    for workers, failure in failures.items():
        print(f"N={workers} failed (log: llama-router-http-workers-{workers}.log): {failure}")
    return {
        **{f"N={workers}": figures[workers] for workers in WORKERS},
        "failures": {f"N={workers}": failure for workers, failure in failures.items()},
        "ratios": report_ratios(figures),
    }


def report_ratios(figures: dict[int, list[dict[str, float]]]) -> dict[str, float | None]:
    """Each ratio of medians, against its aim: above 1 is better for rates, below for times."""

    def median(workers: int, key: str) -> float | None:
        values = [one[key] for one in figures[workers] if key in one]
        return statistics.median(values) if values else None

    ratios: dict[str, float | None] = {}
    print(f"\n{'ratio':52} {'':>6}  aim")
    for ratio in RATIOS:
        over = "" if ratio.baseline == ratio.measure else f" {ratio.baseline},"
        label = f"{ratio.measure}, N={ratio.workers} /{over} N=1"
        mine, base = median(ratio.workers, ratio.measure), median(1, ratio.baseline)
        value = mine / base if mine is not None and base else None
        ratios[label] = value
        shown = "-" if value is None else f"{value:.2f}"
        verdict = ""
        if ratio.aim() and value is not None:
            verdict = "met" if ratio.low <= value <= ratio.high else "MISSED"
        print(f"{label:52} {shown:>6}  {ratio.aim():8} {verdict}")
    return ratios

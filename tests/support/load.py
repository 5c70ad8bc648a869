"""Load against a real service process: an overload burst and SIGTERM under load, for tests and benchmarks.

The tests (``tests/reliability/test_server_faults.py``) assert what the service does under them (503 +
``Retry-After``, a bounded queue, recovery, a clean drain); the benchmark (``bench/overload.py``) reports how
fast. Both run the same load from here.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field

import httpx

from tests.support.helpers import metric_value


# -------------------------------------------------------------------------------------------------- overload
@dataclass(frozen=True)
class Answer:
    """One raw request's outcome: status, seconds from connecting to the whole answer, ``Retry-After``."""

    status: int
    seconds: float
    retry_after: str | None


async def post_raw(port: int, path: str, body: bytes) -> Answer:
    """One ``POST`` on its own connection (``Connection: close``).

    A bare asyncio client: at hundreds of concurrent requests httpx's own overhead (~15 ms each on a 2-core
    machine) would dominate the latencies measured.
    """
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    writer.write(head.encode() + body)
    await writer.drain()
    response = await reader.read()
    writer.close()
    elapsed = time.perf_counter() - started
    lines = response.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    headers = {key.lower(): value for key, value in (line.split(": ", 1) for line in lines[1:] if ": " in line)}
    return Answer(int(lines[0].split(" ", 2)[1]), elapsed, headers.get("retry-after"))


@dataclass(frozen=True)
class Burst:
    """The answers of a burst and the deepest queue the ``/metrics`` gauge showed meanwhile (samples)."""

    answers: list[Answer]
    deepest_queue: int


async def burst(url: str, model: str, count: int, samples: int) -> Burst:
    """``count`` concurrent ``POST /sample`` of ``samples`` each to ``model``; polls its queue depth meanwhile."""
    port = int(url.rsplit(":", 1)[1])
    deepest = 0
    done = asyncio.Event()

    async def watch_queue() -> None:
        nonlocal deepest
        gauge = f'realnvp_queue_depth_samples{{model="{model}"}}'
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            while not done.is_set():
                for line in (await client.get("/metrics")).text.splitlines():
                    if line.startswith(gauge):
                        deepest = max(deepest, int(float(line.rsplit(" ", 1)[1])))
                await asyncio.sleep(0.005)

    watcher = asyncio.create_task(watch_queue())
    body = json.dumps({"model": model, "n": samples}).encode()
    answers = await asyncio.gather(*(post_raw(port, "/sample", body) for _ in range(count)))
    done.set()
    await watcher
    return Burst(list(answers), deepest)


# ------------------------------------------------------------------------------------------- SIGTERM under load
# Transport errors that mean "no answer at all": refused, reset, or closed before a response. At SIGTERM a
# request whose bytes the server has not read yet (still in a socket buffer or the accept backlog, more of them on
# a loaded machine) ends like this; a hang (a timeout) or an error *answer* never may.
NO_ANSWER = frozenset({"ConnectError", "ReadError", "RemoteProtocolError", "WriteError"})


@dataclass
class SigtermRun:
    """What clients saw around a SIGTERM.

    Attributes:
        outcomes: ``(sent, answered, outcome)`` per request, ``perf_counter`` seconds; the outcome is the status
            code or the transport error's class name.
        signalled_at: when SIGTERM was sent.
        listener_closed_at: when a new connection was first refused after it (the server stopped accepting).
        exit_code: the server's exit status.
        exited_after_s: seconds from SIGTERM to the process's exit.
    """

    outcomes: list[tuple[float, float, str]] = field(default_factory=list)
    signalled_at: float = 0.0
    listener_closed_at: float = 0.0
    exit_code: int | None = None
    exited_after_s: float = 0.0

    def in_flight(self) -> list[str]:
        """Outcomes of the requests sent before SIGTERM and answered after it."""
        return [outcome for sent, answered, outcome in self.outcomes if sent < self.signalled_at < answered]

    def before(self) -> list[str]:
        """Outcomes of the requests answered before SIGTERM."""
        return [outcome for _, answered, outcome in self.outcomes if answered <= self.signalled_at]

    def after_close(self) -> list[str]:
        """Outcomes of the requests sent once the server had stopped accepting connections."""
        return [outcome for sent, _, outcome in self.outcomes if sent > self.listener_closed_at]


def _refuses_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except OSError:
        return True


def _queued_samples(url: str) -> float:
    return metric_value(httpx.get(f"{url}/metrics", timeout=30).text, "realnvp_queue_depth_samples", model="moons")


def load_then_sigterm(
    process: subprocess.Popen,
    url: str,
    clients: int = 32,
    before_s: float = 1.5,
    after_s: float = 1.5,
    min_queued: int = 16,
) -> SigtermRun:
    """``clients`` threads loop on ``/sample`` and ``/log-likelihood`` of ``moons``, then SIGTERM.

    The signal goes once the load has run ``before_s`` *and* the ``/metrics`` gauge shows at least ``min_queued``
    samples waiting (requests the server has read and queued, so in flight for sure), however slow the machine.
    The clients go on for ``after_s`` after the signal (their new requests must all be refused), then the
    server's exit is awaited (up to 60 s).
    """
    port = int(url.rsplit(":", 1)[1])
    run = SigtermRun()
    signalled = threading.Event()
    lock = threading.Lock()

    def client(index: int) -> None:
        with httpx.Client(base_url=url, timeout=30) as http:
            while not (signalled.is_set() and time.perf_counter() - run.signalled_at > after_s):
                sent = time.perf_counter()
                try:
                    if index % 2:
                        response = http.post("/sample", json={"model": "moons", "n": 2})
                    else:
                        response = http.post("/log-likelihood", json={"model": "moons", "inputs": [[0.1, 0.2]]})
                    outcome = str(response.status_code)
                except httpx.TransportError as exc:
                    outcome = type(exc).__name__
                    time.sleep(0.05)
                with lock:
                    run.outcomes.append((sent, time.perf_counter(), outcome))

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(before_s)
        give_up = time.perf_counter() + 60
        while _queued_samples(url) < min_queued:
            if time.perf_counter() > give_up:
                raise AssertionError(f"fewer than {min_queued} samples were ever queued under load")
            time.sleep(0.01)
        run.signalled_at = time.perf_counter()
        process.send_signal(signal.SIGTERM)
        signalled.set()
        give_up = run.signalled_at + 60
        while not _refuses_connections(port):
            if time.perf_counter() > give_up:
                raise AssertionError("the server still accepted connections 60 s after SIGTERM")
            time.sleep(0.01)
        run.listener_closed_at = time.perf_counter()
    finally:
        if not signalled.is_set():  # failed before the signal: stop the clients all the same
            run.signalled_at = time.perf_counter()
            signalled.set()
        for thread in threads:
            thread.join(timeout=60)
    run.exit_code = process.wait(timeout=60)
    run.exited_after_s = time.perf_counter() - run.signalled_at
    return run

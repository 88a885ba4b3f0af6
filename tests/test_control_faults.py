"""What clients cannot do to the control socket and the metrics endpoint: hold descriptors
past the per-client bound, crash the server with deep nesting, or flood the log.

Real sockets throughout: the servers run in this process's event loop, the flooding
clients in a child process, so that /proc/self/fd counts the server's descriptors only.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from powercast import control, logs, metrics

pytestmark = pytest.mark.system

BOUND = 1.0
"""The per-client bound the servers get here (the daemon's is CLIENT_TIMEOUT_S)."""
BIG = {"status": {"blob": "x" * 2_000_000}}
"""An answer far bigger than a socket's buffers: a client that never reads makes it stick."""

CLIENTS = """
import socket, sys
kind, where, count, request = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
socks = []
for _ in range(count):
    if kind == "unix":
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        address = where
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        host, port = where.rsplit(":", 1)
        address = (host, int(port))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # read nothing, take little
    try:
        s.connect(address)
        s.sendall(request.encode().decode("unicode_escape").encode("latin-1"))
    except OSError:
        pass
    socks.append(s)
print("ready", flush=True)
sys.stdin.read()  # hold every socket, reading nothing, until told to go
"""


def fds() -> int:
    """Descriptors this process has open now."""
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    """Leave structlog's global configuration as it was found."""
    yield
    structlog.reset_defaults()


def log_lines() -> io.StringIO:
    """Send the daemon's log lines to a StringIO, in logfmt."""
    stream = io.StringIO()
    logs.configure(level="debug", stream=stream, fmt="logfmt")
    return stream


class Clients:
    """Never-reading clients in a child process, each having sent ``request``."""

    def __init__(self, kind: str, where: str, count: int, request: str) -> None:
        self.args = (kind, where, str(count), request)
        self.proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> Clients:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            CLIENTS,
            *self.args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert self.proc.stdout is not None
        assert await asyncio.wait_for(self.proc.stdout.readline(), 30.0) == b"ready\n"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.proc is not None
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        await self.proc.wait()


@contextlib.asynccontextmanager
async def control_server(path: Path, handlers: dict[str, control.Handler]) -> Any:
    """The real control server on ``path`` with the test's bound, stopped on exit; yields
    the server's task."""
    server = control.Server(handlers, timeout=BOUND)
    task = asyncio.create_task(server.serve(control.open_socket(path), path))
    await asyncio.sleep(0.05)
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 5.0)


class TestControlClientsCannotHoldDescriptors:
    def test_never_reading_clients_are_cut_at_the_bound(self, tmp_path: Path) -> None:
        """200 clients that ask for a 2 MB answer and never read: once the bound has passed
        the server holds none of their descriptors, and a normal client is answered."""
        path = tmp_path / "c.sock"

        async def scenario() -> dict[str, Any]:
            async with control_server(path, {"status": lambda r, p: BIG}) as task:
                baseline = fds()
                async with Clients("unix", str(path), 200, '{"request": "status"}\\n'):
                    during = fds()
                    await asyncio.sleep(BOUND + 0.5)
                    after = fds()
                    started = time.monotonic()
                    answer = await asyncio.to_thread(control.call, path, {"request": "status"})
                    took = time.monotonic() - started
                await asyncio.sleep(0.1)  # the answer's end flushed, the connection closed
                running = not task.done()
            return {
                "running": running,
                "baseline": baseline,
                "during": during,
                "after": after,
                "answer": answer,
                "took": took,
            }

        got = asyncio.run(scenario())
        print(
            f"control fds: baseline {got['baseline']}, with 200 clients {got['during']},"
            f" {BOUND + 0.5:g} s later {got['after']}; normal answer in {got['took']:.3f} s"
        )
        assert got["after"] <= got["baseline"] + 3  # the child's two pipes, and slack
        assert got["answer"]["status"] == BIG["status"]
        assert got["running"]

    def test_silent_and_slow_clients_are_cut_at_the_bound(self, tmp_path: Path) -> None:
        """A client that sends nothing, and one that sends a byte at a time, are both
        disconnected at the bound, and their descriptors are gone."""
        path = tmp_path / "c.sock"

        async def scenario() -> tuple[float, float, int, int]:
            async with control_server(path, {"status": lambda r, p: {"status": {}}}):
                baseline = fds()
                started = time.monotonic()
                silent_reader, silent_writer = await asyncio.open_unix_connection(str(path))
                slow_reader, slow_writer = await asyncio.open_unix_connection(str(path))

                async def drip() -> None:
                    with contextlib.suppress(OSError):
                        for byte in b'{"request": "status"}':
                            slow_writer.write(bytes([byte]))
                            await slow_writer.drain()
                            await asyncio.sleep(0.25)

                async def eof(reader: asyncio.StreamReader) -> float:
                    with contextlib.suppress(OSError):
                        await reader.read()
                    return time.monotonic() - started

                dripping = asyncio.create_task(drip())
                silent, slow = await asyncio.wait_for(
                    asyncio.gather(eof(silent_reader), eof(slow_reader)), 5.0
                )
                dripping.cancel()
                silent_writer.close()
                slow_writer.close()
                await asyncio.sleep(0.1)
                return silent, slow, baseline, fds()

        silent, slow, baseline, after = asyncio.run(scenario())
        assert BOUND - 0.1 < silent < BOUND + 0.5
        assert BOUND - 0.1 < slow < BOUND + 0.5
        assert after <= baseline


def nested(lists: int) -> bytes:
    """A status request carrying ``lists`` lists inside each other."""
    return b'{"request": "status", "x": ' + b"[" * lists + b"]" * lists + b"}"


async def exchange(path: Path, data: bytes) -> dict[str, Any]:
    """Send ``data`` on the control socket and return the decoded answer."""
    reader, writer = await asyncio.open_unix_connection(str(path), limit=2**24)
    writer.write(data)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    result: dict[str, Any] = json.loads(answer)
    return result


class TestDeepRequests:
    def test_deep_requests_are_refused_and_the_server_goes_on(self, tmp_path: Path) -> None:
        """Requests nested 30,000 deep (msgspec raises RecursionError), 999 deep (msgspec
        decodes it) and one level over MAX_DEPTH are refused as too deep; 100,000 deep is
        over MAX_REQUEST; one level less is served; the server answers on afterwards."""
        path = tmp_path / "c.sock"
        seen: list[dict[str, Any]] = []

        def status(request: dict[str, Any], peer: control.Peer) -> dict[str, Any]:
            seen.append(request)
            return {"status": repr(request)[:20]}  # what a careless handler might do

        async def scenario() -> list[dict[str, Any]]:
            async with control_server(path, {"status": status}):
                return [
                    await exchange(path, nested(lists) + b"\n")
                    for lists in (100_000, 30_000, 999, control.MAX_DEPTH, control.MAX_DEPTH - 1)
                ] + [await exchange(path, b'{"request": "status"}\n')]

        huge, deep, decodable, over, under, after = asyncio.run(scenario())
        too_deep = f"request nested too deep (at most {control.MAX_DEPTH} levels)"
        assert huge == {"ok": False, "error": f"request longer than {control.MAX_REQUEST} bytes"}
        assert deep == decodable == over == {"ok": False, "error": too_deep}
        assert under["ok"]
        assert after["ok"]
        assert len(seen) == 2  # the handler never saw a deep one

    def test_answer_refuses_deep_nesting_whatever_its_size(self) -> None:
        """Without the line limit, 100,000 levels are refused as too deep, not a crash."""
        server = control.Server({"status": lambda r, p: {"status": {}}})
        peer = control.Peer(1, os.getuid(), os.getgid())
        for data in (nested(100_000), b"[" * 100_000, b'{"a":' * 100_000):
            assert server.answer(data, peer)["error"].startswith("request nested too deep")


def logged(stream: io.StringIO, event: str) -> list[str]:
    """The lines written for ``event``."""
    return [line for line in stream.getvalue().splitlines() if f"event={event} " in line]


def held_back(lines: list[str]) -> int:
    """The sum of similar_not_logged over ``lines``."""
    return sum(
        int(field.split("=", 1)[1])
        for line in lines
        for field in line.split()
        if field.startswith("similar_not_logged=")
    )


class TestPacedControlLog:
    def test_a_flood_of_bad_requests_is_a_few_lines(self, tmp_path: Path) -> None:
        """500 bad requests are each refused, and logged as a line or two; the next line
        after the interval counts the ones held back."""
        path = tmp_path / "c.sock"
        stream = log_lines()
        every = 3.0

        async def scenario() -> tuple[list[dict[str, Any]], float, list[str]]:
            server = control.Server({"status": lambda r, p: {"status": {}}}, BOUND, every)
            task = asyncio.create_task(server.serve(control.open_socket(path), path))
            await asyncio.sleep(0.05)
            started = time.monotonic()
            bad = [b"{not json\n", nested(40_000) + b"\n", b'{"request": "reboot"}\n', b"[]\n"]
            answers = [await exchange(path, bad[i % len(bad)]) for i in range(500)]
            took = time.monotonic() - started
            flood = logged(stream, "control_request_refused")
            await asyncio.sleep(max(0.0, every - (time.monotonic() - started)) + 0.1)
            answers.append(await exchange(path, b"{not json\n"))
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            return answers, took, flood

        answers, took, flood = asyncio.run(scenario())
        lines = logged(stream, "control_request_refused")
        print(
            f"control: 501 bad requests in {took:.2f} s + 1, {len(flood)} lines in the flood,"
            f" {len(lines)} in all, similar_not_logged total {held_back(lines)}"
        )
        assert all(not a["ok"] for a in answers)
        assert 1 <= len(flood) <= 2
        assert len(lines) == len(flood) + 1
        assert len(lines) + held_back(lines) == 501
        assert "similar_not_logged=" in lines[-1]


class Big(Collector):
    """One gauge with an 8 MB label: a scrape bigger than loopback's socket buffers."""

    def collect(self) -> Iterable[Metric]:
        gauge = GaugeMetricFamily("big", "A big label.", labels=["blob"])
        gauge.add_metric(["x" * 8_000_000], 1.0)
        yield gauge


@contextlib.asynccontextmanager
async def metrics_server(registry: CollectorRegistry, every: float = 10.0) -> Any:
    """The real metrics endpoint on 127.0.0.1 with the test's bound; yields (task, host:port)."""
    sock = metrics.open_listener("127.0.0.1:0")
    where = f"127.0.0.1:{sock.getsockname()[1]}"
    task = asyncio.create_task(metrics.serve(sock, registry, timeout=BOUND, log_every_s=every))
    await asyncio.sleep(0.05)
    try:
        yield task, where
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 5.0)


async def http(where: str, accept: str | None = None) -> tuple[bytes, bytes]:
    """GET /metrics; returns (status line, body)."""
    host, port = where.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port), limit=2**25)
    head = f"GET /metrics HTTP/1.1\r\nHost: {where}\r\n"
    if accept is not None:
        head += f"Accept: {accept}\r\n"
    writer.write(head.encode() + b"\r\n")
    answer = await reader.read()
    writer.close()
    status, _, rest = answer.partition(b"\r\n")
    return status, rest.partition(b"\r\n\r\n")[2]


class TestMetricsClients:
    def test_never_reading_scrapers_are_cut_at_the_bound(self) -> None:
        """200 scrapers that ask for 8 MB and never read: after the bound the endpoint holds
        none of their descriptors, and a normal scrape is answered."""

        async def scenario() -> dict[str, Any]:
            registry = CollectorRegistry(auto_describe=False)
            registry.register(Big())
            async with metrics_server(registry) as (task, where):
                baseline = fds()
                request = "GET /metrics HTTP/1.1\\r\\n\\r\\n"
                async with Clients("tcp", where, 200, request):
                    during = fds()
                    await asyncio.sleep(BOUND + 0.5)
                    after = fds()
                    status, body = await http(where)
                running = not task.done()
            return {
                "baseline": baseline,
                "during": during,
                "after": after,
                "status": status,
                "size": len(body),
                "running": running,
            }

        got = asyncio.run(scenario())
        print(
            f"metrics fds: baseline {got['baseline']}, with 200 scrapers {got['during']},"
            f" {BOUND + 0.5:g} s later {got['after']}; normal scrape {got['status']!r}"
        )
        assert got["after"] <= got["baseline"] + 3  # the child's two pipes, and slack
        assert got["status"] == b"HTTP/1.1 200 OK"
        assert got["size"] > 8_000_000
        assert got["running"]

    def test_bad_accept_headers_get_400_and_a_few_lines(self) -> None:
        """500 scrapes with an Accept header prometheus_client cannot parse each get a plain
        400, the log a line or two, the next line the count; good scrapes still work."""
        stream = log_lines()
        every = 3.0
        bad = [
            "application/openmetrics-text; version=abc",
            "text/plain; version=x.y",
            "application/openmetrics-text; version=1.0.\n0",  # would split our Content-Type
        ]

        async def scenario() -> tuple[list[tuple[bytes, bytes]], float, list[str], bool]:
            async with metrics_server(CollectorRegistry(), every) as (task, where):
                started = time.monotonic()
                answers = [await http(where, bad[i % len(bad)]) for i in range(500)]
                took = time.monotonic() - started
                flood = logged(stream, "metrics_bad_accept")
                await asyncio.sleep(max(0.0, every - (time.monotonic() - started)) + 0.1)
                answers.append(await http(where, bad[0]))
                good = await http(where, "application/openmetrics-text; version=1.0.0")
                running = not task.done()
            return [*answers, good], took, flood, running

        answers, took, flood, running = asyncio.run(scenario())
        *refused, good = answers
        lines = logged(stream, "metrics_bad_accept")
        print(
            f"metrics: 501 bad Accept headers in {took:.2f} s + 1, {len(flood)} lines in the"
            f" flood, {len(lines)} in all, similar_not_logged total {held_back(lines)}"
        )
        assert set(refused) == {(b"HTTP/1.1 400 Bad Request", b"bad Accept header\n")}
        assert 1 <= len(flood) <= 2
        assert len(lines) + held_back(lines) == 501
        assert "similar_not_logged=" in lines[-1]
        assert good[0] == b"HTTP/1.1 200 OK"
        assert good[1].endswith(b"# EOF\n")
        assert running

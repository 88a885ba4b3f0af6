"""The control socket: how ``powercast status`` and ``powercast override`` talk to a daemon.

Each daemon listens on a Unix stream socket, ``/run/powercast/<role>.sock`` by default
(``control.socket`` in its config; under systemd, ``$RUNTIME_DIRECTORY/<role>.sock``).
Who may connect is decided by the file's mode: 0660 with group ``powercast`` when that
group exists, else 0600 (the daemon's user, and root).

The protocol is one request per connection, one JSON object per line (UTF-8)::

    -> {"request": "status"}
    <- {"ok": true, "status": {"version": 1, ...}}
    -> {"request": "override", "zone": "default", "fans": "on", "for_s": 1800,
        "reason": "filter change", "user": "alice"}
    <- {"ok": true, "override": {...}}
    <- {"ok": false, "error": "override: for_s: expected 1..86400 seconds, got 0"}

The server is a task of the daemon's TaskGroup and each client a task of the server's
own group, so every client has an owner and is cancelled at shutdown. A client cannot
hurt the daemon: a request is at most :data:`MAX_REQUEST` bytes and :data:`MAX_DEPTH`
levels deep, a whole exchange (the answer drained and the descriptor closed included) must
finish in :data:`CLIENT_TIMEOUT_S` or is aborted, at most :data:`MAX_CLIENTS` are served
at once (more are told "busy" and closed at once), no client's error reaches the
TaskGroup, and what clients get wrong is logged at most once per kind every
:data:`~powercast.pacing.LOG_EVERY_S`. The peer's uid comes
from SO_PEERCRED (the kernel's word, not the client's), for the override log.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import grp
import os
import pwd
import socket
import stat
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import msgspec
import structlog

from powercast.errors import PowercastError
from powercast.pacing import LOG_EVERY_S, Pacer
from powercast.policy import MAX_OVERRIDE_S
from powercast.systemd import runtime_directory

log = structlog.get_logger("powercast.control")

GROUP: Final = "powercast"
MAX_REQUEST: Final = 64 * 1024
"""A request line longer than this is refused (a status request is about 20 bytes)."""
MAX_ANSWER: Final = 16 * 1024 * 1024
"""The client reads at most this much of an answer."""
CLIENT_TIMEOUT_S: Final = 5.0
"""A client must send its request and read the answer within this time; then it is cut."""
MAX_CLIENTS: Final = 8
"""Clients served at once; more are told "busy" and closed at once."""

Handler = Callable[[dict[str, Any], "Peer"], dict[str, Any]]
"""Answers one request: gets the request object and the peer, returns the answer's fields."""


class RequestError(Exception):
    """A request the daemon refuses; ``str()`` is sent back to the client as the error."""


class ControlError(PowercastError):
    """Client side: one line for the operator, naming the socket and what to do."""


def default_socket(role: str, environ: dict[str, str] | None = None) -> Path:
    """``<role>.sock`` in systemd's RuntimeDirectory when it set one, else in /run/powercast."""
    return runtime_directory(environ) / f"{role}.sock"


def socket_path(configured: str, role: str) -> Path:
    """The path a daemon with ``control.socket = configured`` listens on."""
    return Path(configured) if configured else default_socket(role)


# --- peers -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Peer:
    """The process at the other end, as the kernel saw it connect."""

    pid: int
    uid: int
    gid: int

    @property
    def user(self) -> str:
        """The uid's user name, or ``uid N`` when it has none here."""
        try:
            return pwd.getpwuid(self.uid).pw_name
        except KeyError:
            return f"uid {self.uid}"


_UCRED: Final = struct.Struct("3i")


def peer_of(conn: socket.socket) -> Peer:
    pid, uid, gid = _UCRED.unpack(
        conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    )
    return Peer(pid, uid, gid)


# --- requests --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Order:
    """A checked override request: ``fans_on`` None clears the zone's override."""

    zone: str
    fans_on: bool | None
    for_s: float
    why: str


def parse_override(request: dict[str, Any], zones: list[str]) -> Order:
    """Check an override request against the daemon's zones; RequestError says what is wrong.

    ``{"zone": "hall-a", "fans": "on"|"off", "for_s": 1800, "reason": "..."}`` sets one,
    ``{"zone": "hall-a", "clear": true, "reason": "..."}`` clears it. ``zone`` may be left
    out when the controller has a single zone.
    """
    zone = request.get("zone")
    if zone is None:
        if len(zones) != 1:
            raise RequestError(f"zone: expected one of {', '.join(zones)}, got none")
        zone = zones[0]
    elif zone not in zones:
        raise RequestError(f"zone: expected one of {', '.join(zones)}, got {zone!r}")
    why = request.get("reason")
    if not isinstance(why, str) or not why.strip() or len(why) > 200:
        raise RequestError(f"reason: expected a short text (1..200 characters), got {why!r:.60}")
    why = "".join(c if c.isprintable() else " " for c in why.strip())
    if request.get("clear") is True:
        if "fans" in request or "for_s" in request:
            raise RequestError("clear: expected no fans or for_s with clear")
        return Order(zone, None, 0.0, why)
    fans = request.get("fans")
    if fans not in ("on", "off"):
        raise RequestError(f'fans: expected "on" or "off", got {fans!r}')
    for_s = request.get("for_s")
    if (
        isinstance(for_s, bool)
        or not isinstance(for_s, int | float)
        or not 1.0 <= for_s <= MAX_OVERRIDE_S
    ):
        raise RequestError(
            f"for_s: expected 1..{MAX_OVERRIDE_S:g} seconds (an override always ends),"
            f" got {for_s!r}"
        )
    return Order(zone, fans == "on", float(for_s), why)


OVERFLOW_UID: Final = 65534
"""The uid the kernel shows for a user not mapped into the daemon's user namespace (the
units' PrivateUsers=yes maps only root and powercast): then only the client can say who."""


def who(peer: Peer, request: dict[str, Any]) -> str:
    """Who asked, for the log: the peer's user name from its uid (the kernel's word), with
    the name sudo passed on; when the kernel cannot tell (the uid is not mapped here), the
    user the client names, marked as such. The socket's mode already limited who could ask."""
    user, sudo_user = request.get("user"), request.get("sudo_user")
    name = peer.user
    if peer.uid == OVERFLOW_UID and isinstance(user, str) and user:
        name = f"{_clean(user)} (said by the client)"
    if isinstance(sudo_user, str) and sudo_user and sudo_user != peer.user:
        return f"{name} (sudo by {_clean(sudo_user)})"
    return name


def _clean(text: str) -> str:
    return "".join(c if c.isprintable() and not c.isspace() else "_" for c in text[:32])


# --- server ----------------------------------------------------------------------------------


def open_socket(path: Path, group: str = GROUP) -> socket.socket:
    """Bind and listen on ``path``: mode 0660 and ``group`` if it exists, else 0600.

    A socket file left by a daemon that died is replaced; one a live daemon answers on is
    not (two daemons with the same path would otherwise steal each other's socket).
    Raises ControlError with the path and the reason.
    """
    try:
        gid: int | None = grp.getgrnam(group).gr_gid
    except KeyError:
        gid = None
    if not path.parent.exists():
        try:
            path.parent.mkdir(mode=0o750)
            path.parent.chmod(0o750)  # whatever the umask
        except OSError as err:
            raise ControlError(f"{path.parent}: cannot create: {err.strerror}") from None
        if gid is not None:
            with contextlib.suppress(OSError):
                os.chown(path.parent, -1, gid)
    _remove_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        old_umask = os.umask(0o177)  # never a moment with more than 0600
        try:
            sock.bind(str(path))
        finally:
            os.umask(old_umask)
        mode = 0o600
        if gid is not None:
            try:
                # Under the units (Group=powercast) the file is the group's already, and
                # their syscall filter would refuse a chown.
                if os.stat(path).st_gid != gid:
                    os.chown(path, -1, gid)
            except OSError as err:
                log.warning(
                    "control_group_not_set",
                    socket=str(path),
                    group=group,
                    error=err.strerror,
                    mode="0600",
                )
            else:
                mode = 0o660
        os.chmod(path, mode)
        sock.listen(MAX_CLIENTS)
        sock.setblocking(False)
    except OSError as err:
        sock.close()
        raise ControlError(f"{path}: cannot listen: {err.strerror or err}") from None
    return sock


def _remove_stale(path: Path) -> None:
    try:
        info = path.lstat()
    except FileNotFoundError:
        return
    except OSError as err:
        raise ControlError(f"{path}: cannot check: {err.strerror}") from None
    if not stat.S_ISSOCK(info.st_mode):
        raise ControlError(f"{path}: exists and is not a socket; not replacing it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except OSError as err:
        if err.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise ControlError(f"{path}: cannot check: {err.strerror}") from None
    else:
        raise ControlError(f"{path}: another daemon is listening on it (control.socket)")
    finally:
        probe.close()
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


ClientHandler = Callable[
    [asyncio.StreamReader, asyncio.StreamWriter, socket.socket], Awaitable[None]
]


class PacedLog:
    """Log lines a peer can cause, at most one per event every ``every_s``
    (:class:`~powercast.pacing.Pacer`); the next line let through counts the others."""

    def __init__(self, every_s: float = LOG_EVERY_S) -> None:
        self.pacer = Pacer(every_s)

    def warning(self, event: str, **fields: Any) -> None:
        if (extra := self.pacer.fields(event, time.monotonic())) is not None:
            log.warning(event, **fields, **extra)

    def error(self, event: str, **fields: Any) -> None:
        if (extra := self.pacer.fields(event, time.monotonic())) is not None:
            log.error(event, **fields, **extra)


async def accept(
    sock: socket.socket,
    handle: ClientHandler,
    *,
    name: str,
    max_clients: int,
    limit: int,
    busy: bytes = b"",
    timeout: float = CLIENT_TIMEOUT_S,
    paced: PacedLog | None = None,
) -> None:
    """Serve ``sock`` until cancelled: each client in a task of this function's TaskGroup.

    ``handle`` gets the client's streams and socket; whatever it raises is logged here, so
    a client can end its own task but never the daemon. The whole exchange, from accept to
    the descriptor's close (answer sent and drained included), is bounded by ``timeout``;
    at the bound the connection is aborted, whatever is left unsent. With ``max_clients``
    being served, a new client gets ``busy`` (one non-blocking send, no task) and is closed
    at once: no client holds a descriptor past its bound, and at most ``max_clients`` do.
    """
    loop = asyncio.get_running_loop()
    paced = paced or PacedLog()
    serving = 0

    async def one(conn: socket.socket) -> None:
        nonlocal serving
        writer = None
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(sock=conn, limit=limit)
                writer.transport.set_write_buffer_limits(0)  # drain() waits till all is sent
                await handle(reader, writer, conn)
                await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        except Exception as err:  # a bug in a handler: log it, keep serving
            paced.error(f"{name}_client_failed", error=repr(err)[:200])
        finally:
            # All was sent, or the bound passed: close now, dropping what is unsent. close()
            # and wait_closed() would wait for a client that never reads, and abort() after
            # a close() that flushed raises (3.11); on a connection already lost it is a no-op.
            if writer is not None:
                writer.transport.abort()
            else:
                conn.close()
            serving -= 1

    async with asyncio.TaskGroup() as clients:
        while True:
            try:
                conn, _ = await loop.sock_accept(sock)
            except OSError as err:  # EMFILE and the like: say so, wait, go on serving
                paced.error(f"{name}_accept_failed", error=err.strerror or str(err))
                await asyncio.sleep(1.0)
                continue
            if serving >= max_clients:
                paced.warning(f"{name}_busy", max_clients=max_clients)
                conn.setblocking(False)
                with contextlib.suppress(OSError):
                    conn.send(busy)  # into an empty buffer: never waits
                conn.close()
                continue
            conn.setblocking(False)
            serving += 1
            clients.create_task(one(conn), name=f"{name}-client")


class Server:
    """Answers requests on the control socket with the daemon's handlers.

    ``timeout`` bounds each client's whole exchange; refusals a client causes are logged
    at most once per kind every ``log_every_s``.
    """

    def __init__(
        self,
        handlers: dict[str, Handler],
        timeout: float = CLIENT_TIMEOUT_S,
        log_every_s: float = LOG_EVERY_S,
    ) -> None:
        self.handlers = handlers
        self.timeout = timeout
        self.paced = PacedLog(log_every_s)

    async def serve(self, sock: socket.socket, path: Path) -> None:
        """Run until cancelled; then close the socket and remove its file (if still ours)."""
        ours = os.stat(path).st_ino
        try:
            await accept(
                sock,
                self._client,
                name="control",
                max_clients=MAX_CLIENTS,
                limit=MAX_REQUEST,
                busy=_BUSY,
                timeout=self.timeout,
                paced=self.paced,
            )
        finally:
            sock.close()
            with contextlib.suppress(OSError):
                if os.stat(path).st_ino == ours:
                    path.unlink()

    async def _client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: socket.socket
    ) -> None:
        peer = peer_of(conn)
        try:
            line = await reader.readuntil(b"\n")
        except asyncio.LimitOverrunError:
            answer = self._refuse(f"request longer than {MAX_REQUEST} bytes", peer)
        except asyncio.IncompleteReadError as err:
            if not err.partial:
                return  # connected and left: a liveness probe
            answer = self.answer(err.partial, peer)
        else:
            answer = self.answer(line, peer)
        writer.write(msgspec.json.encode(answer) + b"\n")
        await writer.drain()

    def answer(self, line: bytes, peer: Peer) -> dict[str, Any]:
        """The answer to one request line."""
        try:
            request = msgspec.json.decode(line)
        except msgspec.DecodeError as err:
            return self._refuse(f"request is not JSON: {err}", peer)
        except RecursionError:  # msgspec's own limit, near the interpreter's recursion limit
            return self._refuse(_TOO_DEEP, peer)
        if _deeper_than(request, MAX_DEPTH):
            return self._refuse(_TOO_DEEP, peer)
        if not isinstance(request, dict) or not isinstance(request.get("request"), str):
            return self._refuse('expected an object with "request": "<name>"', peer)
        name = request["request"]
        handler = self.handlers.get(name)
        if handler is None:
            known = ", ".join(sorted(self.handlers))
            return self._refuse(f"unknown request {name[:40]!r} (this daemon knows: {known})", peer)
        try:
            return {"ok": True, **handler(request, peer)}
        except RequestError as err:
            return {"ok": False, "error": f"{name}: {err}"}

    def _refuse(self, error: str, peer: Peer) -> dict[str, Any]:
        """A request that is not one of ours (our client never sends it): tell the client,
        and the log, paced (a local user could send thousands)."""
        self.paced.warning("control_request_refused", error=error[:200], uid=peer.uid)
        return {"ok": False, "error": error}


MAX_DEPTH: Final = 16
"""Containers in containers a request may have; ours have 1. Deeper ones are refused before
anything walks them recursively (msgspec's decoder itself, repr, the handlers)."""
_TOO_DEEP: Final = f"request nested too deep (at most {MAX_DEPTH} levels)"
_BUSY: Final = b'{"ok": false, "error": "busy: too many clients at once; try again"}\n'


def _deeper_than(value: object, limit: int) -> bool:
    """Whether ``value`` nests lists and dicts more than ``limit`` deep; not recursive."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children: Any
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


# --- client ----------------------------------------------------------------------------------


def call(path: Path, request: dict[str, Any], timeout: float = CLIENT_TIMEOUT_S) -> dict[str, Any]:
    """Send one request to the daemon at ``path`` and return its answer's fields.

    Every failure is a ControlError with one line that names the socket and what to do.
    """
    known = path.stem in ("controller", "publisher", "relay")
    role = f"powercast {path.stem}" if known else "powercast daemon"
    unit = f"powercast-{path.stem}" if known else "powercast-controller (or -publisher)"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(str(path))
        except FileNotFoundError:
            raise ControlError(
                f"{path}: no such socket: the {role} is not running on this host, or it"
                f" listens elsewhere (start it: systemctl start {unit}; or give --socket PATH)"
            ) from None
        except ConnectionRefusedError:
            raise ControlError(
                f"{path}: connection refused: the {role} is not running (the socket was left"
                f" by one that stopped); see: systemctl status {unit}"
            ) from None
        except PermissionError:
            raise ControlError(
                f"{path}: permission denied: run as root or as a member of group {GROUP}"
                f" (sudo usermod -aG {GROUP} $USER, then log in again)"
            ) from None
        except TimeoutError:
            raise ControlError(f"{path}: no answer within {timeout:g} s (daemon busy?)") from None
        except OSError as err:
            raise ControlError(f"{path}: cannot connect: {err.strerror or err}") from None
        try:
            sock.sendall(msgspec.json.encode(request) + b"\n")
            data = _read_line(sock)
        except TimeoutError:
            raise ControlError(f"{path}: no answer within {timeout:g} s (daemon busy?)") from None
        except OSError as err:
            raise ControlError(f"{path}: connection lost: {err.strerror or err}") from None
    finally:
        sock.close()
    if not data:
        raise ControlError(f"{path}: the daemon closed the connection without answering (busy?)")
    try:
        answer = msgspec.json.decode(data)
    except msgspec.DecodeError as err:
        raise ControlError(f"{path}: answer is not JSON: {err}") from None
    if not isinstance(answer, dict):
        raise ControlError(f"{path}: expected an object as the answer, got {answer!r:.80}")
    if not answer.get("ok"):
        raise ControlError(f"{path}: {answer.get('error', 'refused, without a reason')}")
    return answer


def _read_line(sock: socket.socket) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while size < MAX_ANSWER:
        chunk = sock.recv(65536)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
        if chunk.endswith(b"\n"):
            break
    return b"".join(chunks)

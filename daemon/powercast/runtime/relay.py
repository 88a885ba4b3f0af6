"""The relay daemon: the group on this segment <-> a topic on an MQTT broker (aiomqtt).

What goes on in each direction is decided by the pure core, :class:`powercast.relay.Relay`
(its docstring is the theory of operation); this module owns the sockets, the MQTT
client, reconnection and the outbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import stat
import time
from pathlib import Path
from typing import Any, Final

import aiomqtt
import structlog
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from powercast import config as cfg
from powercast import net
from powercast import status as report
from powercast.auth import Gate, Keyring
from powercast.pacing import Backoff, Pacer
from powercast.relay import LOG_EVERY_S, MAX_PACKET, OUTBOX_SIZE, Relay, Side, pack, unpack
from powercast.runtime.lifecycle import Daemon
from powercast.runtime.receiver import Receiver
from powercast.secrets import SecretError, read_secret
from powercast.sources.base import SourceError
from powercast.systemd import Notifier, credentials_directory

log = structlog.get_logger("powercast")

RELAY_RECEIVE_BUFFER = 4 * 1024 * 1024
"""The segment socket's buffer: a relay takes every publisher's datagrams, and bursts of
tens of thousands a second must outlast a few milliseconds without the CPU."""


class RelayDaemon(Daemon[cfg.RelayConfig]):
    role = "relay"

    def __init__(
        self,
        path: Path,
        config: cfg.RelayConfig,
        keyring: Keyring,
        notifier: Notifier | None = None,
    ) -> None:
        super().__init__(path, config, keyring, notifier)
        self.loop = asyncio.get_running_loop()
        self.core = Relay(_gate(config, keyring))
        self._receiver: asyncio.DatagramTransport | None = None
        self._sender: socket.socket | None = None
        self._client: aiomqtt.Client | None = None
        self._pending: list[bytes] = []
        """Datagrams admitted from the segment in the current read, published when it ends."""
        self._broker_task: asyncio.Task[None] | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._pacer = Pacer(LOG_EVERY_S)
        self.connected_since: float | None = None
        """Wall clock of the current connection to the broker; None while there is none."""
        self.down_since: float | None = None
        """Wall clock when the current outage began; None while connected or never tried."""
        self.last_error = ""
        self.attempts = 0
        """Connection attempts that failed in the current outage."""
        self.retry_at: float | None = None

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self, tg: asyncio.TaskGroup) -> None:
        self._tg = tg
        self._receiver, self._sender = await self._open(self.config.network)
        self._broker_task = tg.create_task(self._broker(self.config.broker), name="broker")

    async def _open(
        self, network: cfg.RelayNetwork
    ) -> tuple[asyncio.DatagramTransport, socket.socket]:
        sender = net.open_sender(
            network.group, network.port, network.interface, ttl=network.ttl, loop=network.loop
        )
        try:
            sock = net.open_receiver(network.group, network.port, network.interface)
            with contextlib.suppress(OSError):  # best effort, up to net.core.rmem_max
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RELAY_RECEIVE_BUFFER)
            receiver, _ = await self.loop.create_datagram_endpoint(
                lambda: Receiver(self._from_segment, self._flush), sock=sock
            )
        except BaseException:
            sender.close()
            raise
        log.info(
            "relaying",
            group=network.group,
            port=network.port,
            interface=network.interface,
            ttl=network.ttl,
            direction=self.config.direction,
        )
        return receiver, sender

    async def apply(self, new: cfg.RelayConfig, keyring: Keyring) -> None:
        self.core.gate = _gate(new, keyring)
        if new.network != self.config.network:
            receiver, sender = await self._open(new.network)  # fails before the old closes
            self.close_sockets()
            self._receiver, self._sender = receiver, sender
        if new.broker != self.config.broker and self._tg is not None:
            if self._broker_task is not None:
                self._broker_task.cancel()
            self._client = None
            self._broker_task = self._tg.create_task(self._broker(new.broker), name="broker")

    def close_sockets(self) -> None:
        if self._receiver is not None:
            self._receiver.close()
        if self._sender is not None:
            self._sender.close()

    def close(self) -> None:
        self.close_sockets()
        log.info("relay_summary", **dict(sorted(self.core.counters.items())))

    # --- the segment side -------------------------------------------------------------------

    def _from_segment(self, data: bytes, source: str) -> None:
        """A datagram heard on the group: to the broker, unless seen or not ours."""
        if self.config.direction == "from_broker":
            return
        why = self.core.admit(data, "segment", time.time(), source)
        if why is not None:
            self._not_relayed("segment", why)
            return
        self._pending.append(data)

    def _flush(self) -> None:
        """Publish what this read of the socket admitted, now: a lone datagram as it is,
        a burst as batches (:func:`powercast.relay.pack`). Nothing waits for more."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        client = self._client
        if client is None:
            self.core.counters["segment_lost"] += len(pending)
            return
        # paho underneath aiomqtt: publish() queues and the loop writes it; awaiting each
        # one (aiomqtt's publish) costs a task and a wake-up per message.
        paho = client._client
        topic = self.config.broker.topic
        for payload, count in pack(pending):
            if len(paho._out_packet) >= OUTBOX_SIZE:  # a broker too slow: lose, not hoard
                self.core.counters["segment_lost"] += count
                continue
            info = paho.publish(topic, payload, qos=0)
            if info.rc == 0:
                self.core.counters["segment_relayed"] += count
            else:
                self.core.counters["segment_lost"] += count

    def _from_broker_payload(self, payload: bytes) -> None:
        """An MQTT message: one datagram, or a batch of them (each checked on its own)."""
        if self.config.direction == "to_broker":
            return
        datagrams = unpack(payload)
        if datagrams is None:
            self.core.counters["broker_received"] += 1
            self.core.counters["broker_unframed"] += 1
            self._not_relayed("broker", "unframed")
            return
        for data in datagrams:
            self._from_broker(data)

    def _from_broker(self, data: bytes) -> None:
        """A datagram from the broker: multicast on this segment, unless seen or stale."""
        why = self.core.admit(data, "broker", time.time())
        if why is not None:
            self._not_relayed("broker", why)
            return
        assert self._sender is not None
        n = self.config.network
        try:
            self._sender.sendto(data, (n.group, n.port))
        except OSError as err:
            self.core.counters["broker_lost"] += 1
            self._limited("send", "send_failed", error=str(err), group=n.group, port=n.port)
        else:
            self.core.counters["broker_relayed"] += 1

    def _not_relayed(self, side: Side, why: str) -> None:
        if why != "seen":  # seen: the loop being cut, as designed; anything else is news
            self._limited(f"{side}.{why}", "datagram_not_relayed", side=side, reason=why)

    def _limited(self, key: str, event: str, **fields: Any) -> None:
        """A warning, at most one per ``key`` every LOG_EVERY_S (the rest counted)."""
        held = self._pacer.fields(key, self.loop.time())
        if held is not None:
            log.warning(event, **fields, **held)

    # --- the broker side --------------------------------------------------------------------

    async def _broker(self, broker: cfg.Broker) -> None:
        """Stay connected: connect, subscribe, take messages; on any failure, back off and
        try again. Logged once per outage, and once when it ends."""
        backoff = Backoff(broker.reconnect_min_s, broker.reconnect_max_s)
        where = f"{broker.host}:{broker.port}"
        while True:
            try:
                client = _client(broker)
                async with client:
                    await client.subscribe(
                        broker.topic, options=SubscribeOptions(qos=0, noLocal=True)
                    )
                    self._connected(client, where, broker.topic)
                    backoff.delay(ok=True)
                    async for message in client.messages:
                        payload = message.payload
                        if isinstance(payload, bytearray):
                            payload = bytes(payload)
                        if isinstance(payload, bytes):
                            self._from_broker_payload(payload)
                raise aiomqtt.MqttError("the broker ended the session")
            except (aiomqtt.MqttError, OSError, SourceError) as err:
                delay = backoff.delay(ok=False)
                self._disconnected(_explain(err, broker), where, delay)
                await asyncio.sleep(delay)

    def _connected(self, client: aiomqtt.Client, where: str, topic: str) -> None:
        self._client = client
        self.connected_since = time.time()
        if self.down_since is None:
            log.info("broker_connected", broker=where, topic=topic)
        else:
            log.info(
                "broker_recovered",
                broker=where,
                topic=topic,
                outage_s=round(self.connected_since - self.down_since, 3),
                attempts=self.attempts,
            )
        self.down_since, self.attempts, self.last_error, self.retry_at = None, 0, "", None
        self.notifier.status(self.status_line())

    def _disconnected(self, error: str, where: str, delay: float) -> None:
        self._client = None
        self.connected_since = None
        self.attempts += 1
        self.retry_at = time.time() + delay
        self.last_error = error
        if self.down_since is None:
            self.down_since = time.time()
            log.warning("broker_unreachable", broker=where, error=error, retry_in_s=round(delay, 3))
            self.notifier.status(self.status_line())

    # --- status -----------------------------------------------------------------------------

    def broker_state(self) -> dict[str, Any]:
        b = self.config.broker
        return {
            "host": b.host,
            "port": b.port,
            "topic": b.topic,
            "connected": self._client is not None,
            "connected_since": self.connected_since,
            "down_since": self.down_since,
            "error": self.last_error or None,
            "attempts": self.attempts,
            "retry_at": self.retry_at,
        }

    def status(self) -> str:
        b, n, c = self.config.broker, self.config.network, self.core.counters
        if self._client is not None:
            state = "broker connected"
        elif self.down_since is None:
            state = "connecting to the broker"
        else:
            state = f"broker unreachable for {time.time() - self.down_since:.0f} s"
            state += f" ({self.last_error})"
        return (
            f"{n.group}:{n.port} <-> {b.host}:{b.port} {b.topic}: {state};"
            f" {c['segment_relayed']} out, {c['broker_relayed']} in"
        )

    def snapshot(self) -> dict[str, Any]:
        """The relay's status document (control socket ``status``, metrics)."""
        n, a = self.config.network, self.config.auth
        return {
            **self.common(),
            "network": {"group": n.group, "port": n.port, "interface": n.interface},
            "direction": self.config.direction,
            "broker": self.broker_state(),
            "counters": dict(sorted(self.core.counters.items())),
            "publishers": len(self.core.publishers),
            "keys": report.keys(self.keyring, a.mode, a.scheme, a.publishers),
        }


class _LastError(logging.Handler):
    """Keeps paho's last error line: the only word of why a TLS 1.3 broker hung up (a
    client certificate it refused is told after the handshake, on the first read)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.last = ""

    def emit(self, record: logging.LogRecord) -> None:
        self.last = record.getMessage()


_MQTT_LOG = logging.getLogger("powercast.mqtt")
_MQTT_LOG.setLevel(logging.ERROR)  # paho's chatter stays out of the daemon's log
_MQTT_ERRORS = _LastError()
_MQTT_LOG.addHandler(_MQTT_ERRORS)

_NOT_AUTHORISED: Final = frozenset({4, 5, 134, 135})
"""CONNACK codes for a refused login: MQTT 3.1.1 4/5, MQTT 5 134 (bad user name or
password) and 135 (not authorized), which Mosquitto gives for a wrong password."""


def _explain(err: BaseException, broker: cfg.Broker) -> str:
    """Why the broker could not be reached, in words for the log and the status."""
    cause = err.__cause__ or err.__context__
    for e in (err, cause):
        if isinstance(e, ssl.SSLCertVerificationError):
            return f"certificate verify failed: {e.verify_message}"
    if isinstance(err, aiomqtt.MqttCodeError):
        rc = err.rc
        code = getattr(rc, "value", rc)
        if code in _NOT_AUTHORISED:
            return f"not authorised: bad user name or password ({rc})"
        return f"refused by the broker: {rc}"
    for e in (err, cause):
        if isinstance(e, ssl.SSLError):
            return f"TLS: {e.reason or e}"
    text = str(err) or type(err).__name__
    heard, _MQTT_ERRORS.last = _MQTT_ERRORS.last, ""
    if broker.tls and "timed out" in text.lower() and heard:
        return f"{_ssl_words(heard)} ({text})"
    return text


def _ssl_words(line: str) -> str:
    """paho's "failed to receive on socket: [SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED] ..."
    as the broker's reason: "TLS alert: certificate required"."""
    if "[SSL: " in line:
        code = line.split("[SSL: ", 1)[1].split("]", 1)[0]
        for head in ("TLSV13_ALERT_", "TLSV1_ALERT_", "SSLV3_ALERT_"):
            if code.startswith(head):
                return (
                    "the broker refused this relay's TLS: "
                    + code[len(head) :].replace("_", " ").lower()
                )
    return line


def _gate(config: cfg.RelayConfig, keyring: Keyring) -> Gate | None:
    """What checks datagrams before they go on; None with ``auth.mode = "off"``."""
    auth = config.auth
    if auth.mode == "off":
        return None
    return Gate.build(keyring, auth.publishers, auth.verify_rate, auth.source_verify_rate)


def credential(path: str, environ: dict[str, str] | None = None) -> str:
    """A file as configured; a bare name is in systemd's $CREDENTIALS_DIRECTORY if set."""
    where = credentials_directory(environ)
    if where is not None and "/" not in path:
        return str(where / path)
    return path


def tls_context(broker: cfg.Broker) -> ssl.SSLContext:
    """Verify the broker against ca_file (else the system's CAs) and its name; offer the
    client certificate when one is configured. Raises SourceError naming the key."""
    context = _NamedContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED, check_hostname
    context.server_name = broker.tls_server_name or None
    try:
        if broker.ca_file is None:
            context.load_default_certs(ssl.Purpose.SERVER_AUTH)
        else:
            context.load_verify_locations(cafile=broker.ca_file)
    except (OSError, ssl.SSLError) as err:
        raise SourceError(f"broker.ca_file: {broker.ca_file}: {_words(err)}") from None
    if broker.cert_file is not None and broker.key_file is not None:
        key = credential(broker.key_file)
        try:
            mode = os.stat(key).st_mode
        except OSError as err:
            raise SourceError(f"broker.key_file: {key}: cannot read: {_words(err)}") from None
        if mode & (stat.S_IROTH | stat.S_IWOTH):
            raise SourceError(
                f"broker.key_file: {key}: readable or writable by others"
                f" (mode {stat.S_IMODE(mode):04o}); chmod o-rw it"
            )
        try:
            context.load_cert_chain(broker.cert_file, key)
        except (OSError, ssl.SSLError) as err:
            raise SourceError(
                f"broker.cert_file/key_file: {broker.cert_file}, {key}: {_words(err)}"
            ) from None
    return context


class _NamedContext(ssl.SSLContext):
    """Checks the broker's certificate for ``server_name`` (broker.tls_server_name) instead
    of the host dialled, for a broker reached by an address its certificate lacks."""

    server_name: str | None = None

    def wrap_socket(self, sock: Any, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        if self.server_name is not None:
            kwargs["server_hostname"] = self.server_name
        return super().wrap_socket(sock, *args, **kwargs)


def _words(err: OSError | ssl.SSLError) -> str:
    if isinstance(err, ssl.SSLError):
        return str(err.reason or err)
    return err.strerror or str(err)


def _client(broker: cfg.Broker) -> aiomqtt.Client:
    """An MQTT v5 client for ``broker``: clean start, no will, nothing persisted, and no
    packet over MAX_PACKET (the broker drops those for us instead of sending them)."""
    try:
        password = (
            read_secret(credential(broker.password_file), "broker.password_file")
            if broker.password_file
            else None
        )
    except SecretError as err:
        raise SourceError(str(err)) from None
    context = tls_context(broker) if broker.tls else None
    connect = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho: no hints
    connect.MaximumPacketSize = MAX_PACKET
    client = aiomqtt.Client(
        broker.host,
        broker.port,
        identifier=broker.client_id or f"powercast-relay-{socket.gethostname()}-{os.getpid()}",
        protocol=aiomqtt.ProtocolVersion.V5,
        username=broker.username,
        password=password,
        keepalive=broker.keepalive_s,
        timeout=broker.connect_timeout_s,
        clean_start=True,
        properties=connect,
        logger=_MQTT_LOG,
        socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],  # no Nagle: no 40 ms
        tls_context=context,
    )
    client.pending_calls_threshold = OUTBOX_SIZE
    return client

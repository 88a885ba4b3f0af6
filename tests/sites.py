"""Sites that share no network, joined only by relays through an MQTT broker.

Built from :mod:`netbed`: each site is a :class:`netbed.Bed` (a bridge of its own, hosts
on 10.77.0.0/24, no route to any other site), and a third bed, the "wan", holds the
broker's host. A relay host is an ordinary host of its site with a second veth
(``eth1``) plugged into the wan's bridge on 10.78.0.0/24, which is the only way between
sites. Mosquitto (Debian's ``mosquitto``) is started by the test inside the broker's host,
or on loopback (:class:`Mosquitto` with ``host=None``) for tests that need no root.

Everything is removed by :meth:`Sites.close` (``with Sites(...)``), on every exit path.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import netbed
from netbed import Bed, Host

from harness import end, free_port

WAN_SUBNET = "10.78.0"
BROKER_ADDRESS = f"{WAN_SUBNET}.1"
BROKER_PORT = 1883
MOSQUITTO = "/usr/sbin/mosquitto"


def mosquitto_missing() -> str | None:
    """Why no broker can be started here, or None."""
    if shutil.which("mosquitto") is None and not os.path.exists(MOSQUITTO):
        return "needs mosquitto: apt-get install mosquitto, or run .ci/run"
    return None


def _mosquitto() -> str:
    return shutil.which("mosquitto") or MOSQUITTO


class Pki:
    """A test CA, a server certificate for localhost, 127.0.0.1 and the wan broker's
    address, a client certificate, and a second CA (with a client certificate of its own)
    that the broker does not trust. Made with ``cryptography``; keys mode 0600."""

    def __init__(self, directory: Path) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        now = datetime.datetime.now(datetime.UTC)

        def name(cn: str) -> x509.Name:
            return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

        def write(stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
            (directory / f"{stem}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
            path = directory / f"{stem}.key"
            path.write_bytes(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
            path.chmod(0o600)

        def issue(
            cn: str,
            issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
            *,
            ca: bool = False,
            usage: x509.ObjectIdentifier | None = None,
            sans: list[x509.GeneralName] | None = None,
        ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
            key = ec.generate_private_key(ec.SECP256R1())
            signer_name, signer_key = (
                (issuer[0].subject, issuer[1]) if issuer is not None else (name(cn), key)
            )
            b = (
                x509.CertificateBuilder()
                .subject_name(name(cn))
                .issuer_name(signer_name)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(hours=1))
                .not_valid_after(now + datetime.timedelta(days=2))
                .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            )
            if ca:
                b = b.add_extension(
                    x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                    critical=True,
                ).add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            else:
                assert issuer is not None
                b = b.add_extension(
                    x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer[1].public_key()),
                    False,
                )
            if usage is not None:
                b = b.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            if sans:
                b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
            return b.sign(signer_key, hashes.SHA256()), key

        ca = issue("powercast test CA", None, ca=True)
        write("ca", *ca)
        server = issue(
            "localhost", ca, usage=ExtendedKeyUsageOID.SERVER_AUTH,
            sans=[x509.DNSName("localhost"), x509.DNSName("broker.test"),
                  x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                  x509.IPAddress(ipaddress.ip_address(BROKER_ADDRESS))],
        )  # fmt: skip
        write("server", *server)
        write("client", *issue("relay", ca, usage=ExtendedKeyUsageOID.CLIENT_AUTH))
        rogue = issue("someone else's CA", None, ca=True)
        write("rogue-ca", *rogue)
        write("rogue-client", *issue("relay", rogue, usage=ExtendedKeyUsageOID.CLIENT_AUTH))
        for path in directory.iterdir():
            if path.suffix == ".crt":
                path.chmod(0o644)
        directory.chmod(0o755)

    def path(self, name: str) -> str:
        return str(self.directory / name)


def password_file(workdir: Path, users: dict[str, str]) -> Path:
    """A Mosquitto password file (mosquitto_passwd) with ``users``."""
    path = workdir / "mosquitto.passwd"
    path.unlink(missing_ok=True)
    for user, password in users.items():
        flags = ["-b"] if path.exists() else ["-c", "-b"]
        subprocess.run(
            [shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd", *flags,
             str(path), user, password],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip
    path.chmod(0o644)
    return path


class Mosquitto:
    """A broker for one test: no persistence, one listener; log kept on disk. Anonymous
    and plain by default; with ``pki`` the listener speaks TLS only and requires a client
    certificate from that CA, with ``passwords`` (user -> password) it requires a login."""

    def __init__(
        self,
        workdir: Path,
        *,
        bed: Bed | None = None,
        host: Host | None = None,
        pki: Pki | None = None,
        passwords: dict[str, str] | None = None,
        extra: tuple[str, ...] = (),
    ):
        self.workdir = workdir
        self.bed, self.host = bed, host
        self.pki = pki
        self.address = BROKER_ADDRESS if host is not None else "127.0.0.1"
        self.port = BROKER_PORT if host is not None else free_port_tcp()
        self.config = workdir / f"mosquitto-{self.port}.conf"
        lines = [
            # a test run as root: else it drops to user mosquitto, who cannot read workdir
            "user root",
            "per_listener_settings false",
            f"listener {self.port} {self.address}",
            "persistence false",
            "log_dest stderr",
            "set_tcp_nodelay true",
            "log_type error",
            "log_type warning",
            "log_type notice",
        ]
        if passwords:
            lines += ["allow_anonymous false", f"password_file {password_file(workdir, passwords)}"]
        else:
            lines.append("allow_anonymous true")
        if pki is not None:
            lines += [
                f"cafile {pki.path('ca.crt')}",
                f"certfile {pki.path('server.crt')}",
                f"keyfile {pki.path('server.key')}",
                "require_certificate true",
            ]
        self.config.write_text("\n".join([*lines, *extra]) + "\n")
        self.config.chmod(0o644)
        self.log = workdir / f"mosquitto-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> None:
        """Start the broker and wait until it accepts connections."""
        argv = [_mosquitto(), "-c", str(self.config)]
        with self.log.open("ab") as log:
            if self.host is not None and self.bed is not None:
                self.proc = self.bed.start(self.host, *argv, stderr=log, stdout=log)
            else:
                self.proc = subprocess.Popen(argv, stderr=log, stdout=log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self.log.read_text()[-2000:]}")
            if self._listening():
                return
            time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not listen in {timeout} s: {self.log.read_text()}")

    def _listening(self) -> bool:
        if self.host is not None:
            probe = self.host.run(
                "python3", "-c",
                "import socket,sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), 1)",
                self.address, str(self.port), check=False,
            )  # fmt: skip
            return probe.returncode == 0
        with contextlib.suppress(OSError), socket.create_connection((self.address, self.port), 1):
            return True
        return False

    def kill(self) -> None:
        """A crash: SIGKILL, clients see their connections reset."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def stop(self) -> None:
        end(self.proc)


def free_port_tcp() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Sites:
    """``count`` sites and a wan with the broker; ``with Sites(workdir) as s:``."""

    def __init__(
        self,
        workdir: Path,
        count: int = 2,
        *,
        pki: Pki | None = None,
        passwords: dict[str, str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.pki, self.passwords = pki, passwords
        self.sites: list[Bed] = []
        self.wan = Bed()
        self.uplinks: list[str] = []
        self.broker_host: Host | None = None
        self.broker: Mosquitto | None = None
        self._count = count

    def __enter__(self) -> Sites:
        try:
            self.wan.__enter__()
            for _ in range(self._count):
                self.sites.append(Bed().__enter__())
            self.broker_host = self.wan.add_host("broker")
            self.broker_host.run("ip", "addr", "add", f"{BROKER_ADDRESS}/24", "dev", "eth0")
            self.broker = Mosquitto(
                self.workdir,
                bed=self.wan,
                host=self.broker_host,
                pki=self.pki,
                passwords=self.passwords,
            )
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def host(self, site: int, name: str) -> Host:
        """A plain host in ``site`` (0-based)."""
        return self.sites[site].add_host(name)

    def relay_host(self, site: int, name: str) -> Host:
        """A host in ``site`` with a second leg (``eth1``) on the wan, where the broker is."""
        host = self.sites[site].add_host(name)
        index = len(self.uplinks) + 1
        veth = f"{self.wan.bridge}u{index}"
        address = f"{WAN_SUBNET}.{10 + index}"
        run = netbed._ip
        run("link", "add", veth, "type", "veth", "peer", "name", "eth1", "netns", host.netns)
        self.uplinks.append(veth)
        run("link", "set", veth, "master", self.wan.bridge, "up")
        run("-n", host.netns, "addr", "add", f"{address}/24", "dev", "eth1")
        run("-n", host.netns, "link", "set", "eth1", "up")
        return host

    def close(self) -> None:
        """Processes, uplinks, then every bed (their namespaces and bridges)."""
        if self.broker is not None:
            self.broker.stop()
        for bed in [*self.sites, self.wan]:
            for proc in bed.processes:
                if proc.poll() is None:
                    proc.terminate()
        for veth in self.uplinks:
            netbed._ip("link", "del", veth, check=False)
        for bed in [*self.sites, self.wan]:
            bed.close()

    def leftovers(self) -> list[str]:
        return [name for bed in [*self.sites, self.wan] for name in bed.leftovers()]


# --- configs ----------------------------------------------------------------------------


def relay_config(
    network: dict[str, Any], address: str, port: int, *, topic: str = "powercast/test", **more: Any
) -> dict[str, Any]:
    """A relay bridging ``network`` (group, port, interface) to the broker at address:port."""
    return {
        "role": "relay",
        "network": {**network, "loop": False},
        "broker": {
            "host": address,
            "port": port,
            "topic": topic,
            "keepalive_s": 2,
            "reconnect_min_s": 0.1,
            "reconnect_max_s": 0.5,
        },
        "log": {"format": "json", "level": "info"},
        **more,
    }


RELAY_USER, RELAY_PASSWORD = "relay", "s3cret-relay"


def tls_login(pki: Pki, workdir: Path, password: str = RELAY_PASSWORD) -> dict[str, Any]:
    """``[broker]`` keys for TLS with the client certificate and the relay's login.

    The password file is written once: a relay already started may be reading it when the
    next relay's keys are made, and rewriting it in place would show that relay an empty file.
    """
    secret = workdir / f"relay-password-{abs(hash(password)) % 10**6}"
    if not secret.exists():
        secret.write_text(password + "\n")
        secret.chmod(0o600)
    return {
        "tls": True,
        "ca_file": pki.path("ca.crt"),
        "cert_file": pki.path("client.crt"),
        "key_file": pki.path("client.key"),
        "username": RELAY_USER,
        "password_file": str(secret),
    }


__all__ = [
    "BROKER_ADDRESS",
    "BROKER_PORT",
    "RELAY_PASSWORD",
    "RELAY_USER",
    "Mosquitto",
    "Pki",
    "Sites",
    "free_port",
    "relay_config",
    "tls_login",
]

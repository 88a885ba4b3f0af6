"""The NUT source against a real upsd with dummy-ups drivers, and end to end with the daemons.

One upsd per module (tests/nutbed.py) serves a UPS per test that changes one (each
driver's state is a ``.dev`` file the test rewrites), so the ~3 s until the drivers' first
data is paid once.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from nutbed import DRIVER, ONLINE, UPSD, NutServer, connectable, wait_until

from powercast.config import ConfigError, NutSource, PublisherConfig, Reading, parse
from powercast.sources import SourceError, make_reader
from powercast.sources.nut import NutReader, ProtocolError, _parse_var, power_status, to_reading

from harness import controller_config, free_port, make_keys, network, running, write_toml

UPSES = ("main", "second", "killed", "frozen", "e2e", "fast", "flip")


@pytest.fixture(scope="module")
def nut(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NutServer]:
    if not (UPSD.exists() and DRIVER.exists()):
        missing = "needs upsd: apt-get install nut-server, or run .ci/run"
        if os.environ.get("POWERCAST_NUT_TESTS") == "require":
            pytest.fail(f"{missing}, and POWERCAST_NUT_TESTS=require")
        pytest.skip(missing)
    server = NutServer(tmp_path_factory.mktemp("nut"), UPSES)
    try:
        server.start()
        for ups in UPSES:
            server.wait_status(ups, "OL")
        yield server
    finally:
        server.stop()


def reader(port: int, ups: str | list[str] = "main", **options: Any) -> NutReader:
    source = NutSource(ups=ups, port=port, **{"interval_s": 0.1, "timeout_s": 1.0, **options})
    made = make_reader(source, 0, 0.0)
    assert isinstance(made, NutReader)
    return made


def read_once(port: int, ups: str | list[str] = "main", **options: Any) -> Reading:
    """One read by a new reader, closed in its own event loop."""

    async def main() -> Reading:
        r = reader(port, ups, **options)
        try:
            return await r.read()
        finally:
            r.close()

    return asyncio.run(main())


async def read_until(r: NutReader, check: Any, timeout: float = 5.0) -> Reading | str:
    """Poll like the publisher until ``check(reading or error text)`` holds; the last result."""
    deadline = time.monotonic() + timeout
    result: Reading | str = ""
    while time.monotonic() < deadline:
        try:
            result = await r.read()
        except SourceError as err:
            result = str(err)
        if check(result):
            return result
        await asyncio.sleep(0.1)
    raise AssertionError(f"still {result!r} after {timeout} s")


def status_of(result: Reading | str) -> str:
    if isinstance(result, str):
        return result
    return result.power.status if result.power else "none"


def config_error(toml: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse(f'role = "publisher"\n[[sources]]\nkind = "nut"\n{toml}', "p.toml")
    return str(info.value)


@pytest.mark.unit
class TestNutConfig:
    def test_one_or_several_upses(self) -> None:
        """ups is a name or a list of names; everything else has a default."""
        one = parse('role = "publisher"\n[[sources]]\nkind = "nut"\nups = "a"', "p.toml")
        several = parse('role = "publisher"\n[[sources]]\nkind = "nut"\nups = ["a", "b"]', "p.toml")
        assert isinstance(one, PublisherConfig)
        assert isinstance(several, PublisherConfig)
        first, second = one.sources[0], several.sources[0]
        assert isinstance(first, NutSource)
        assert isinstance(second, NutSource)
        assert (first.ups_names, second.ups_names) == (["a"], ["a", "b"])
        assert (first.host, first.port, first.tls, first.interval_s) == (
            "127.0.0.1",
            3493,
            "off",
            1.0,
        )

    def test_errors_name_the_key(self) -> None:
        """Bad names, a password without a user, two passwords or an unknown tls are refused."""
        assert config_error('ups = "a b"') == (
            "p.toml: sources[0].ups: expected UPS names of letters, digits and . _ - that start"
            " with a letter or digit, got 'a b'"
        )
        assert config_error('ups = ["a", "a"]') == (
            "p.toml: sources[0].ups: expected distinct UPS names, got ['a', 'a']"
        )
        assert config_error('ups = "a"\npassword = "x"') == (
            "p.toml: sources[0].username: expected a user name to go with the password, got none"
        )
        assert config_error('ups = "a"\nusername = "u"\npassword = "x"\npassword_file = "f"') == (
            "p.toml: sources[0].password: expected either password or password_file, got both"
        )
        assert config_error('ups = "a"\ntls = "yes"') == (
            "p.toml: sources[0].tls: expected one of 'off', 'try', 'required', got \"yes\""
        )
        assert config_error('ups = "a"\nstatus_interval_s = 0.001') == (
            "p.toml: sources[0].status_interval_s: expected at least 0.01 s (each is a request"
            " to upsd), got 0.001"
        )
        assert config_error('ups = "a"\nusername = "u"\npassword = "two words"') == (
            "p.toml: sources[0].password: expected printable ASCII without spaces or quotes,"
            " got other characters (value not shown)"
        )


@pytest.mark.unit
class TestPowerStatus:
    @pytest.mark.parametrize(
        ("ups_status", "expected"),
        [
            ("OL", "online"),
            ("OL CHRG", "online"),
            ("OL BYPASS", "online"),
            ("OL LB", "online"),
            ("OB DISCHRG", "on_battery"),
            ("OB LB", "low_battery"),
            ("OB DISCHRG LB", "low_battery"),
            ("OL FSD", "low_battery"),
            ("FSD", "low_battery"),
            ("LB", "low_battery"),
            ("OL OB", "unknown"),
            ("OFF", "unknown"),
            ("RB", "unknown"),
            ("", "unknown"),
            (None, "unknown"),
        ],
    )
    def test_tokens(self, ups_status: str | None, expected: str) -> None:
        """ups.status tokens map to mains present, on battery, low battery, or unknown."""
        assert power_status(ups_status) == expected


@pytest.mark.unit
class TestToReading:
    def test_values_and_sensors(self) -> None:
        """Power from the first UPS, a <ups>.temperature sensor from each."""
        got = to_reading(
            [
                ("a", {**ONLINE, "ups.status": "OB"}),
                ("b", {"ups.status": "OL", "ups.temperature": "31.5"}),
            ],
            "nut a@h:1",
        )
        assert got.power is not None
        assert (got.power.status, got.power.charge_pct, got.power.runtime_s) == (
            "on_battery",
            100.0,
            1800.0,
        )
        assert (got.power.load_pct, got.power.input_v) == (30.0, 230.0)
        assert got.temperatures == {"a.temperature": 25.0, "b.temperature": 31.5}

    def test_missing_values_are_left_out(self) -> None:
        """A UPS that reports only its status gives a status and nothing else."""
        got = to_reading([("a", {"ups.status": "OL"})], "nut a@h:1")
        assert got == Reading(power=got.power, temperatures={})
        assert got.power is not None
        assert got.power.charge_pct is None

    def test_garbage_values_are_refused(self) -> None:
        """A value that is not a number, or out of bounds, fails the reading with its name."""
        with pytest.raises(SourceError, match=r"^nut a@h:1: a: battery.charge: expected a number"):
            to_reading([("a", {"ups.status": "OL", "battery.charge": "full"})], "nut a@h:1")
        with pytest.raises(SourceError, match=r"^nut a@h:1: power.charge_pct: expected"):
            to_reading([("a", {"ups.status": "OL", "battery.charge": "150"})], "nut a@h:1")

    def test_quoting(self) -> None:
        """VAR lines are unquoted with NUT's escapes; anything else is a protocol error."""
        assert _parse_var(r'VAR a ups.alarm "x \"y\" \\ z"', "a", "ups.alarm") == r'x "y" \ z'
        for bad in (
            'VAR b ups.status "OL"',  # another UPS
            'VAR a ups.load "OL"',  # another variable
            'VAR a ups.status "OL',  # unbalanced quotes
            'VAR a ups.status "OL" x',
            "HELLO",
        ):
            with pytest.raises(ProtocolError):
                _parse_var(bad, "a", "ups.status")


def make_certificates(directory: Path) -> Path:
    """A CA (ca.pem) and upsd's certificate for 127.0.0.1 in an NSS database (nss/), the
    way upsd (built with NSS on Debian) reads it: nickname "upsd", database password in pw."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import pkcs12
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def certificate(subject: str, key: Any, issuer: Any, issuer_key: Any, ca: bool) -> Any:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(issuer or x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            ip = x509.IPAddress(ipaddress.ip_address("127.0.0.1"))
            builder = builder.add_extension(x509.SubjectAlternativeName([ip]), critical=False)
            usage = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH])
            builder = builder.add_extension(usage, critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = certificate("powercast test CA", ca_key, None, ca_key, ca=True)
    server = certificate("127.0.0.1", key, ca.subject, ca_key, ca=False)
    (directory / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    p12 = pkcs12.serialize_key_and_certificates(
        b"upsd", key, server, [ca], serialization.BestAvailableEncryption(b"p12pass")
    )
    (directory / "server.p12").write_bytes(p12)
    (directory / "pw").write_text("dbpass\n")
    (directory / "p12pw").write_text("p12pass\n")
    nss = directory / "nss"
    nss.mkdir()
    pw, p12pw = str(directory / "pw"), str(directory / "p12pw")
    subprocess.run(["certutil", "-N", "-d", str(nss), "-f", pw], check=True, capture_output=True)
    p12 = str(directory / "server.p12")
    subprocess.run(
        ["pk12util", "-i", p12, "-d", str(nss), "-k", pw, "-w", p12pw],
        check=True,
        capture_output=True,
    )
    return nss


@pytest.mark.system
class TestNutReader:
    def test_reads_values_over_one_connection(self, nut: NutServer) -> None:
        """Status, charge, runtime, load, voltage and temperature from upsd, on one connection."""

        async def main() -> tuple[list[Reading], int]:
            r = reader(nut.port)
            try:
                return [await r.read() for _ in range(3)], r.connections
            finally:
                r.close()

        readings, connections = asyncio.run(main())
        assert connections == 1
        for got in readings:
            assert got.power is not None
            assert got.power.status == "online"
            assert (got.power.charge_pct, got.power.runtime_s) == (100.0, 1800.0)
            assert (got.power.load_pct, got.power.input_v) == (30.0, 230.0)
            assert got.temperatures == {"main.temperature": 25.0}

    def test_dev_file_on_battery_changes_the_reading(self, nut: NutServer) -> None:
        """Writing OB, then OB LB, to the driver's file is read as on_battery, then low_battery."""

        async def main() -> list[Reading | str]:
            r = reader(nut.port)
            try:
                seen = []
                nut.set("main", {**ONLINE, "ups.status": "OB DISCHRG", "battery.charge": "80"})
                seen.append(await read_until(r, lambda x: status_of(x) == "on_battery"))
                nut.set("main", {**ONLINE, "ups.status": "OB DISCHRG LB", "battery.charge": "9"})
                seen.append(await read_until(r, lambda x: status_of(x) == "low_battery"))
                nut.set("main", ONLINE)
                seen.append(await read_until(r, lambda x: status_of(x) == "online"))
                return seen
            finally:
                r.close()

        on_battery, low, _ = asyncio.run(main())
        assert isinstance(on_battery, Reading)
        assert on_battery.power is not None
        assert on_battery.power.charge_pct == 80.0
        assert isinstance(low, Reading)
        assert low.power is not None
        assert low.power.charge_pct == 9.0

    def test_status_between_full_reads(self, nut: NutServer) -> None:
        """Between full reads only the status is asked; a new status brings a full read at
        once, so the reading that tells it has the values of the same moment."""

        async def main() -> tuple[int, int, Reading | str, int]:
            r = reader(nut.port, "fast", interval_s=30.0, status_interval_s=0.05)
            try:
                for _ in range(10):
                    await r.read()
                quiet = r.full_reads
                nut.set("fast", {**ONLINE, "ups.status": "OB DISCHRG", "battery.charge": "80"})
                changed = await read_until(r, lambda x: status_of(x) == "on_battery")
                return quiet, r.full_reads, changed, r.connections
            finally:
                r.close()
                nut.set("fast", ONLINE)

        quiet, after, changed, connections = asyncio.run(main())
        assert quiet == 1
        assert after == 2
        assert isinstance(changed, Reading)
        assert changed.power is not None
        assert changed.power.charge_pct == 80.0
        assert connections == 1

    def test_several_upses(self, nut: NutServer) -> None:
        """With several UPS names, power is the first's and each one gives a temperature."""
        nut.set("second", {"ups.status": "OB", "ups.temperature": "31"})

        async def main() -> Reading | str:
            r = reader(nut.port, ["main", "second"])
            try:
                seen = lambda x: getattr(x, "temperatures", {}).get("second.temperature")  # noqa: E731
                return await read_until(r, lambda x: seen(x) == 31.0)
            finally:
                r.close()

        got = asyncio.run(main())
        assert isinstance(got, Reading)
        assert got.power is not None
        assert got.power.status == "online"
        assert got.temperatures == {"main.temperature": 25.0, "second.temperature": 31.0}

    def test_unknown_ups(self, nut: NutServer) -> None:
        """A UPS upsd does not serve is ERR UNKNOWN-UPS, named."""
        with pytest.raises(SourceError) as info:
            read_once(nut.port, "nosuch")
        assert str(info.value) == (
            f"nut nosuch@127.0.0.1:{nut.port}: ERR UNKNOWN-UPS (upsd serves no UPS of this name)"
        )

    def test_driver_killed_then_back(self, nut: NutServer) -> None:
        """A dead driver is ERR DRIVER-NOT-CONNECTED, WAIT while a new one starts, then data."""

        async def main() -> tuple[Reading | str, Reading | str, int]:
            r = reader(nut.port, "killed")
            try:
                await read_until(r, lambda x: status_of(x) == "online")
                nut.kill_driver("killed")
                gone = await read_until(r, lambda x: "DRIVER-NOT-CONNECTED" in str(x), 3.0)
                nut.start_driver("killed")
                waiting = await read_until(r, lambda x: "WAIT" in str(x), 8.0)
                await read_until(r, lambda x: status_of(x) == "online", 8.0)
                return gone, waiting, r.connections
            finally:
                r.close()

        gone, waiting, connections = asyncio.run(main())
        where = f"nut killed@127.0.0.1:{nut.port}"
        assert (
            gone == f"{where}: ERR DRIVER-NOT-CONNECTED (upsd is not connected to the UPS driver)"
        )
        assert waiting == f"{where}: WAIT (the driver has not sent its data to upsd yet)"
        assert connections == 1  # upsd's errors leave the connection usable

    def test_frozen_driver_is_stale(self, nut: NutServer) -> None:
        """A driver that stops updating is ERR DATA-STALE after upsd's MAXAGE, fresh again after."""
        proc = nut.drivers["frozen"]

        async def main() -> Reading | str:
            r = reader(nut.port, "frozen")
            try:
                await read_until(r, lambda x: status_of(x) == "online")
                proc.send_signal(signal.SIGSTOP)
                stale = await read_until(r, lambda x: isinstance(x, str), 8.0)
                proc.send_signal(signal.SIGCONT)
                await read_until(r, lambda x: status_of(x) == "online", 5.0)
                return stale
            finally:
                proc.send_signal(signal.SIGCONT)
                r.close()

        stale = asyncio.run(main())
        assert stale == (
            f"nut frozen@127.0.0.1:{nut.port}: ERR DATA-STALE"
            " (upsd has no fresh data from the driver)"
        )

    def test_upsd_restart_reconnects(self, nut: NutServer) -> None:
        """When upsd restarts, the next read opens a new connection by itself and reads on."""

        async def main() -> tuple[Reading | str, int]:
            r = reader(nut.port)
            try:
                await r.read()
                assert nut.upsd is not None
                nut.upsd.terminate()
                nut.upsd.wait()
                refused = await read_until(r, lambda x: isinstance(x, str), 2.0)
                nut.upsd = nut._spawn([str(UPSD), "-u", "root", "-F"], "upsd.log")
                await read_until(r, lambda x: status_of(x) == "online", 8.0)
                return refused, r.connections
            finally:
                r.close()

        refused, connections = asyncio.run(main())
        assert refused == f"nut main@127.0.0.1:{nut.port}: Connection refused"
        assert connections >= 2

    def test_login_with_password_file(self, nut: NutServer, tmp_path: Path) -> None:
        """USERNAME/PASSWORD from a private password file; one others can read is refused."""
        secret = tmp_path / "nut.password"
        secret.write_text("secret\n")
        secret.chmod(0o640)
        got = read_once(nut.port, username="tester", password_file=str(secret))
        assert got.power is not None
        assert got.power.status == "online"
        secret.chmod(0o644)
        with pytest.raises(SourceError, match=r"password_file: .* readable or writable by others"):
            read_once(nut.port, username="tester", password_file=str(secret))

    def test_starttls_without_tls_on_upsd(self, nut: NutServer) -> None:
        """tls = "try" goes on in plain text when upsd has no TLS; "required" refuses."""
        got = read_once(nut.port, tls="try")
        assert got.power is not None
        assert got.power.status == "online"
        with pytest.raises(SourceError) as info:
            read_once(nut.port, tls="required")
        assert str(info.value) == (
            f"nut main@127.0.0.1:{nut.port}: STARTTLS refused: ERR FEATURE-NOT-CONFIGURED"
            " (tls = 'required')"
        )

    def test_starttls_verified(self, nut: NutServer, tmp_path: Path) -> None:
        """STARTTLS to a upsd with TLS: read over TLS; an unknown CA or another name is refused."""
        if not (shutil.which("certutil") and shutil.which("pk12util")):
            missing = "needs NSS tools: apt-get install libnss3-tools, or run .ci/run"
            if os.environ.get("POWERCAST_NUT_TESTS") == "require":
                pytest.fail(missing)
            pytest.skip(missing)
        nss = make_certificates(tmp_path)
        # A second upsd on the module's drivers (same state directory), with TLS configured.
        conf = tmp_path / "conf"
        conf.mkdir()
        shutil.copy(nut.dir / "ups.conf", conf / "ups.conf")
        (conf / "upsd.users").write_text("")
        env = {**nut.env, "NUT_CONFPATH": str(conf), "NUT_ALTPIDPATH": str(conf)}

        def start(port: int) -> subprocess.Popen[bytes] | None:
            """upsd listening on ``port``, or None when it cannot (the port taken meanwhile)."""
            (conf / "upsd.conf").write_text(
                f'LISTEN 127.0.0.1 {port}\nCERTPATH {nss}\nCERTIDENT "upsd" "dbpass"\n'
                "DISABLE_WEAK_SSL true\n"
            )
            for path in conf.iterdir():
                path.chmod(0o600)
            with (conf / "upsd.log").open("wb") as out:
                proc = subprocess.Popen(
                    [str(UPSD), "-u", "root", "-F"], env=env, stdout=out, stderr=out
                )
            if wait_until(lambda: connectable(port), 3.0):
                return proc
            proc.kill()
            proc.wait(5)
            return None

        for _ in range(3):  # a free port may be taken (as an ephemeral one) before upsd binds
            port = free_port()
            if (started := start(port)) is not None:
                break
        assert started is not None, (conf / "upsd.log").read_text()
        upsd = started
        try:

            async def main() -> tuple[Reading | str, bool]:
                r = reader(port, tls="required", ca_file=str(tmp_path / "ca.pem"))
                try:
                    got = await read_until(r, lambda x: status_of(x) == "online", 8.0)
                    return got, r._conn is not None and r._conn.encrypted
                finally:
                    r.close()

            got, encrypted = asyncio.run(main())
            assert encrypted
            assert isinstance(got, Reading)
            assert got.temperatures == {"main.temperature": 25.0}
            with pytest.raises(SourceError) as info:
                read_once(port, tls="required")  # the system's CAs do not know ours
            assert str(info.value) == (
                f"nut main@127.0.0.1:{port}: TLS: certificate not trusted:"
                " self-signed certificate in certificate chain"
            )
            with pytest.raises(SourceError, match="Hostname mismatch"):
                read_once(port, tls="try", ca_file=str(tmp_path / "ca.pem"), host="localhost")
        finally:
            upsd.terminate()
            upsd.wait(5)
        assert "SSL handshake done successfully" in (conf / "upsd.log").read_text()

    def test_refused(self) -> None:
        """Nothing listening is a one-line SourceError, at once."""
        port = free_port()
        with pytest.raises(SourceError, match=rf"^nut main@127.0.0.1:{port}: Connection refused$"):
            read_once(port)

    def test_silent_server_times_out(self) -> None:
        """A server that accepts but never answers fails the read at timeout_s."""
        with socket.socket() as server:
            server.bind(("127.0.0.1", 0))
            server.listen(1)
            port = server.getsockname()[1]
            started = time.monotonic()
            with pytest.raises(SourceError, match=r"no answer within 0.3 s$"):
                read_once(port, timeout_s=0.3)
            assert time.monotonic() - started < 1.5

    def test_connect_times_out(self) -> None:
        """A connection that is never accepted (full backlog) fails at timeout_s too."""
        with socket.socket() as server, socket.socket() as first:
            server.bind(("127.0.0.1", 0))
            server.listen(0)
            port = server.getsockname()[1]
            first.connect(("127.0.0.1", port))  # fills the backlog: the next SYN is dropped
            started = time.monotonic()
            with pytest.raises(SourceError, match=r"no answer within 0.3 s$"):
                read_once(port, timeout_s=0.3)
            assert time.monotonic() - started < 1.5

    def test_garbage_server(self) -> None:
        """A server that speaks something else is 'not the NUT protocol', and is dropped."""

        async def main() -> tuple[str, int]:
            async def chatter(_: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
                w.write(b"220 smtp.example ESMTP\n" * 3)
                await w.drain()

            server = await asyncio.start_server(chatter, "127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]
            r = reader(port)
            try:
                await r.read()
            except SourceError as err:
                return str(err), port
            finally:
                server.close()
            raise AssertionError("read garbage without an error")

        message, port = asyncio.run(main())
        assert message == (
            f"nut main@127.0.0.1:{port}: not the NUT protocol:"
            " expected 'VAR main ups.status \"<value>\"', got '220 smtp.example ESMTP'"
        )


RECORD = "import os, sys; open(sys.argv[1], 'a').write(os.environ['POWERCAST_STATE'] + '\\n')"


@pytest.mark.system
class TestEndToEnd:
    def test_outage_sheds_and_a_lost_driver_fails_safe(
        self, nut: NutServer, tmp_path: Path
    ) -> None:
        """upsd says OB: the controller sheds; the driver stale or gone: failsafe; back: sheds."""
        port = free_port()
        keys = str(make_keys(tmp_path / "keys"))
        publisher = write_toml(
            tmp_path / "p.toml",
            {
                "role": "publisher",
                "id": "ups-nut",
                "heartbeat_s": 0.2,
                "network": network(port),
                "auth": {"keys_dir": keys, "key_id": 1},
                "sources": [{"kind": "nut", "ups": "e2e", "port": nut.port, "interval_s": 0.2}],
                "log": {"format": "json"},
            },
        )
        record = [sys.executable, "-c", RECORD, str(tmp_path / "a")]
        controller = write_toml(
            tmp_path / "c.toml",
            controller_config(port, keys, actions=[{"on": "shedding", "argv": record}]),
        )
        driver = nut.drivers["e2e"]
        with (
            running("control", "--config", str(controller)) as ctl,
            running("publish", "--config", str(publisher)) as pub,
        ):
            ctl.wait_for("transition", state="normal")
            nut.set("e2e", {**ONLINE, "ups.status": "OB DISCHRG"})
            shed = ctl.wait_for("transition", timeout=5.0, state="shedding")
            assert (shed["power"], shed["fans"], shed["hottest"]) == (
                "on_battery",
                "off",
                "ups-nut/e2e.temperature",
            )

            try:
                driver.send_signal(signal.SIGSTOP)
                failed = pub.wait_for("source_failed", timeout=8.0)
                assert "ERR DATA-STALE" in failed["error"]
                safe = ctl.wait_for("transition", timeout=2.0, state="failsafe")
                assert safe["power"] == "unknown"
            finally:
                driver.send_signal(signal.SIGCONT)
            pub.wait_for("source_recovered", timeout=8.0)
            ctl.wait_for("transition", timeout=5.0, state="shedding")

            nut.kill_driver("e2e")
            assert ctl.wait_for("transition", timeout=3.0, state="failsafe")["fans"] == "on"
            # upsd may say WAIT for a moment before it sees the driver gone: two reasons, logged
            # once each.
            reasons = []
            while "DRIVER-NOT-CONNECTED" not in "".join(reasons):
                reasons.append(pub.wait_for("source_failed", timeout=5.0)["error"])
            assert all(("WAIT" in r) != ("DRIVER-NOT-CONNECTED" in r) for r in reasons)
            assert len(reasons) <= 2
            assert pub.proc.poll() is None

    def test_flip_announced_before_the_interval(self, nut: NutServer, tmp_path: Path) -> None:
        """With full reads and heartbeats 5 s apart, each flip of the .dev file reaches the
        controller's transition within 2 s (the driver's own 1 s loop included)."""
        port = free_port()
        keys = str(make_keys(tmp_path / "keys"))
        source = {"kind": "nut", "ups": "flip", "port": nut.port, "interval_s": 5.0}
        publisher = write_toml(
            tmp_path / "p.toml",
            {
                "role": "publisher",
                "id": "ups-flip",
                "heartbeat_s": 5.0,
                "network": network(port),
                "auth": {"keys_dir": keys, "key_id": 1},
                "sources": [source],
                "log": {"format": "json"},
            },
        )
        policy = {"shed_after_s": 3600.0, "restore_after_s": 0.0}
        controller = write_toml(tmp_path / "c.toml", controller_config(port, keys, policy=policy))
        with (
            running("control", "--config", str(controller)) as ctl,
            running("publish", "--config", str(publisher)),
        ):
            ctl.wait_for("transition", timeout=10.0, state="normal")
            for status, state in (("OB DISCHRG", "on_battery"), ("OL", "normal")):
                nut.set("flip", {**ONLINE, "ups.status": status})
                started = time.monotonic()
                seen = ctl.wait_for("transition", timeout=2.0, state=state)
                assert time.monotonic() - started < 2.0
                assert seen["power"] == ("on_battery" if state == "on_battery" else "online")

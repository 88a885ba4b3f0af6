"""A real NUT server for tests and benchmarks: upsd and dummy-ups drivers run from
/lib/nut in one directory, each UPS's state a ``.dev`` file rewritten at will, and
NUT's own monitor (upsmon) beside them.

Recipe and traps: shared notes/nut.md (``-u root``, whole-second mtimes, MAXAGE).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from harness import end, free_port

NUT = Path("/lib/nut")
UPSD = NUT / "upsd"
DRIVER = NUT / "dummy-ups"
UPSMON = NUT / "upsmon"

USER = "tester"
PASSWORD = "secret"
"""A upsd user (upsmon primary): readers may send it, upsmon logs in with it."""

ONLINE = {
    "ups.status": "OL",
    "battery.charge": "100",
    "battery.runtime": "1800",
    "ups.load": "30",
    "input.voltage": "230",
    "ups.temperature": "25",
}


class NutServer:
    """upsd and one dummy-ups driver per UPS, all in one directory, run by the test."""

    def __init__(self, directory: Path, upses: tuple[str, ...]) -> None:
        self.dir = directory
        self.upses = upses
        self.port = 0
        self.upsd: subprocess.Popen[bytes] | None = None
        self.drivers: dict[str, subprocess.Popen[bytes]] = {}
        self._mtime = 0
        self.env = {
            **os.environ,
            "NUT_CONFPATH": str(directory),
            "NUT_STATEPATH": str(directory),
            "NUT_ALTPIDPATH": str(directory),
        }
        for ups in upses:
            self.set(ups, ONLINE)
        (directory / "ups.conf").write_text(
            "".join(
                f"[{ups}]\n\tdriver = dummy-ups\n\tport = {ups}.dev\n\tpollinterval = 1\n"
                f'\tdesc = "test UPS {ups}"\n'
                for ups in upses
            )
        )
        (directory / "upsd.users").write_text(
            f"[{USER}]\n\tpassword = {PASSWORD}\n\tupsmon primary\n"
        )
        for path in directory.iterdir():
            path.chmod(0o600)

    def set(self, ups: str, values: dict[str, str]) -> None:
        """Replace the UPS's state; each write gets a newer whole-second mtime (dummy-once)."""
        path = self.dir / f"{ups}.dev"
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(f"{k}: {v}\n" for k, v in values.items()))
        self._mtime = max(int(time.time()), self._mtime + 1)
        os.utime(tmp, (self._mtime, self._mtime))
        tmp.replace(path)

    def start(self) -> None:
        for ups in self.upses:
            self.start_driver(ups)
        for _ in range(5):  # a port taken meanwhile makes upsd exit 1 at once: pick another
            self.port = free_port()
            (self.dir / "upsd.conf").write_text(f"LISTEN 127.0.0.1 {self.port}\nMAXAGE 3\n")
            (self.dir / "upsd.conf").chmod(0o600)
            self.upsd = self._spawn([str(UPSD), "-u", "root", "-F"], "upsd.log")
            if wait_until(lambda: connectable(self.port), 3.0):
                return
            self.upsd.kill()
            self.upsd.wait()
        raise RuntimeError(f"upsd did not start: {(self.dir / 'upsd.log').read_text()}")

    def start_driver(self, ups: str) -> None:
        argv = [str(DRIVER), "-a", ups, "-u", "root", "-F"]
        self.drivers[ups] = self._spawn(argv, f"driver-{ups}.log")

    def kill_driver(self, ups: str) -> None:
        proc = self.drivers[ups]
        proc.send_signal(signal.SIGCONT)
        proc.kill()
        proc.wait()
        (self.dir / f"dummy-ups-{ups}").unlink(missing_ok=True)  # left behind when killed

    def _spawn(self, argv: list[str], log: str) -> subprocess.Popen[bytes]:
        with (self.dir / log).open("ab") as out:
            return subprocess.Popen(argv, env=self.env, stdout=out, stderr=out)

    def status(self, ups: str) -> str:
        """ups.status as upsd serves it now, or upsd's ERR line (a raw client of our own)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
            s.sendall(f"GET VAR {ups} ups.status\n".encode())
            answer = s.makefile("rb").readline().decode().strip()
        return answer.rsplit(" ", 1)[-1].strip('"')

    def wait_status(self, ups: str, status: str, timeout: float = 8.0) -> None:
        if not wait_until(lambda: self.status(ups) == status, timeout):
            raise AssertionError(f"{ups}: ups.status still {self.status(ups)!r}, not {status!r}")

    def stop(self) -> None:
        for proc in [*self.drivers.values(), *([self.upsd] if self.upsd else [])]:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def wait_until(check: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return True
        except OSError:
            pass
        time.sleep(0.05)
    return False


def connectable(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True


def unavailable(*, upsmon: bool = False) -> str | None:
    """Why NUT cannot run here, or None."""
    needed = [UPSD, DRIVER, *([UPSMON] if upsmon else [])]
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        absent = ", ".join(missing)
        return f"needs upsd: {absent} missing (apt-get install nut-server nut-client, or .ci/run)"
    return None


class Upsmon:
    """NUT's upsmon watching one UPS of ``server`` every second (POLLFREQ 1), as a
    monitor only (power value 0: it never shuts anything down). Its NOTIFYCMD appends
    ``<NOTIFYTYPE> <$EPOCHREALTIME>`` to :attr:`record` on ONBATT and ONLINE.

    upsmon writes /run/nut/upsmon.pid whatever NUT_ALTPIDPATH says, and refuses to start
    beside another upsmon; as root it runs in a mount namespace of its own where
    /run/nut is a directory of ours, so the host's NUT is left alone.
    """

    def __init__(self, server: NutServer, ups: str) -> None:
        directory = server.dir / f"upsmon-{ups}"
        (directory / "run").mkdir(parents=True)
        self.record = directory / "notified"
        notify = directory / "notify.sh"
        notify.write_text(f'#!/bin/bash\necho "$NOTIFYTYPE $EPOCHREALTIME" >> {self.record}\n')
        notify.chmod(0o755)
        conf = directory / "upsmon.conf"
        conf.write_text(
            f"MONITOR {ups}@127.0.0.1:{server.port} 0 {USER} {PASSWORD} primary\n"
            "MINSUPPLIES 0\nPOLLFREQ 1\nPOLLFREQALERT 1\n"
            'SHUTDOWNCMD "/bin/true"\n'
            f"NOTIFYCMD {notify}\nNOTIFYFLAG ONBATT EXEC\nNOTIFYFLAG ONLINE EXEC\n"
            f"POWERDOWNFLAG {directory / 'killpower'}\n"
        )
        conf.chmod(0o600)
        argv = [str(UPSMON), "-p", "-F", "-u", "root"]
        if os.geteuid() == 0 and shutil.which("unshare") and Path("/run/nut").is_dir():
            mount = 'mount --bind "$0" /run/nut && exec "$@"'
            argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", mount]
            argv += [str(directory / "run"), str(UPSMON), "-p", "-F", "-u", "root"]
        env = {**server.env, "NUT_CONFPATH": str(directory), "NUT_ALTPIDPATH": str(directory)}
        with (directory / "upsmon.log").open("ab") as out:
            self.proc = subprocess.Popen(argv, env=env, stdout=out, stderr=out)
        self.log = directory / "upsmon.log"
        self._server = server
        self._ups = ups

    def wait_logged_in(self, timeout: float = 10.0) -> None:
        """Until upsd logs upsmon's LOGIN (it polls from then on)."""
        line = f"logged into UPS [{self._ups}]"
        if not wait_until(lambda: line in (self._server.dir / "upsd.log").read_text(), timeout):
            raise RuntimeError(f"upsmon did not log in within {timeout} s: {self.log.read_text()}")

    def notifications(self) -> list[tuple[str, float]]:
        """(NOTIFYTYPE, Unix time) of each notification so far, in order."""
        if not self.record.exists():
            return []
        out = []
        for line in self.record.read_text().splitlines():
            kind, _, stamp = line.partition(" ")
            try:
                out.append((kind, float(stamp)))
            except ValueError:
                continue
        return out

    def stop(self) -> None:
        end(self.proc)

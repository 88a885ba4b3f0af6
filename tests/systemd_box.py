"""A throw-away systemd + journald for tests: boot a container, run commands in it, tear it down.

The container's PID 1 is this host's own /lib/systemd/systemd; its root is an overlay of the
host's root filesystem over a tmpfs, so a package installed or a file written inside never
reaches the host (tests/systemd_box.sh does the mounts). It has its own pid, mount, network
(loopback only), ipc, uts and cgroup namespaces, and boots to a minimal target: journald
runs, host services do not. It needs root and util-linux only, and works whether or not the
host's PID 1 is systemd. Boot takes about half a second; use one per test module::

    @pytest.fixture(scope="module")
    def box() -> Iterator[SystemdBox]:
        with booted() as box:  # or a skip saying what this machine lacks
            yield box

    def test_unit(box):
        (box.units / "x.service").write_text(UNIT)     # /etc/systemd/system/x.service
        (box.opt / "x.py").write_text(CODE)            # /opt/box/x.py, read-only inside
        box.sh("systemctl", "daemon-reload")
        box.sh("systemctl", "start", "x.service")

Teardown is certain: leaving the ``with`` powers the container off (killing it if it does
not stop), removes its cgroup and files; a container whose test process died is killed by
``timeout`` at the end of its lifetime, and its leftovers are removed by the next boot.
The journal lives on the container's tmpfs: read what you need before it goes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import NoReturn

import pytest

SCRIPT = Path(__file__).with_name("systemd_box.sh")
BASE = Path(tempfile.gettempdir()) / "powercast-systemd-box"
"""Where the runs' directories live, one ``run.*`` each (removed when empty)."""
PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
SYSTEMD = Path("/lib/systemd/systemd")
TOOLS = ("unshare", "nsenter", "setpriv", "mount", "pivot_root", "timeout")

DEFAULT_TARGET = """\
[Unit]
Description=The test box: the basic system and nothing else
Requires=basic.target
After=basic.target
AllowIsolate=yes
"""


class BoxError(RuntimeError):
    """The container did not boot, or a command in it failed; the message says what it saw."""


def missing() -> str | None:
    """What this machine lacks to boot a container, as a skip reason, or None."""
    if sys.platform != "linux":
        return "needs root and util-linux unshare: a systemd container needs Linux"
    if os.geteuid() != 0:
        return "needs root and util-linux unshare: run the tests as root (.ci/run does)"
    absent = [tool for tool in TOOLS if shutil.which(tool, path=f"{PATH}:{os.defpath}") is None]
    if absent:
        return (
            f"needs root and util-linux unshare: {', '.join(absent)} not found"
            " (apt-get install util-linux coreutils mount)"
        )
    if not SYSTEMD.is_file():
        return "needs systemd: /lib/systemd/systemd not found (apt-get install systemd)"
    return None


def skip_or_fail(reason: str) -> NoReturn:
    """Skip with reason; fail instead under POWERCAST_SYSTEMD_TESTS=require (.ci/run), where
    a skip would hide a broken unit or package."""
    if os.environ.get("POWERCAST_SYSTEMD_TESTS") == "require":
        pytest.fail(f"POWERCAST_SYSTEMD_TESTS=require, but this test {reason}")
    pytest.skip(reason)


@contextlib.contextmanager
def booted(lifetime_s: float = 1800.0) -> Iterator[SystemdBox]:
    """A booted container for a fixture, closed however the tests end; a skip (or, under
    POWERCAST_SYSTEMD_TESTS=require, a failure) when this machine cannot boot one."""
    reason = missing()
    if reason is not None:
        skip_or_fail(reason)
    with SystemdBox.boot(lifetime_s) as box:
        yield box


@dataclass(frozen=True)
class Proc:
    """A process we started, named by pid and start time, so a reused pid is never signalled."""

    pid: int
    start: str

    @classmethod
    def of(cls, pid: int) -> Proc | None:
        """The process ``pid`` as it is now, or None when it is gone or a zombie."""
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return None
        fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state ppid ...
        if fields[0] in ("Z", "X"):
            return None
        return cls(pid, fields[19])  # starttime, field 22 of proc(5)

    def alive(self) -> bool:
        """The same process still runs."""
        return Proc.of(self.pid) == self

    def kill(self, sig: signal.Signals = signal.SIGKILL) -> None:
        """Send sig if, and only if, it is still this process."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def children(self) -> list[int]:
        """The pids of its children (empty when it is gone)."""
        try:
            text = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text()
        except OSError:
            return []
        return [int(pid) for pid in text.split()]


def _cgroups(name: str) -> list[Path]:
    """A new cgroup dir beside ours in the cgroup2 hierarchy (on a hybrid host: the unified
    one), so the container's cgroup namespace is rooted there, away from the host's."""
    lines = Path("/proc/self/cgroup").read_text().splitlines()
    own = next((line[3:] for line in lines if line.startswith("0::")), "/")
    root = Path("/sys/fs/cgroup")
    if not _is_cgroup2(root):
        root = root / "unified"
        if not _is_cgroup2(root):
            raise BoxError("no cgroup2 hierarchy at /sys/fs/cgroup or /sys/fs/cgroup/unified")
    return [root / own.lstrip("/") / name]


def _is_cgroup2(path: Path) -> bool:
    return (path / "cgroup.controllers").exists()


def _remove_cgroup(cgroup: Path) -> None:
    """Kill what is left in the cgroup tree (all of it ours), then remove it depth-first."""
    if not cgroup.is_dir():
        return
    for _ in range(50):
        for procs in cgroup.rglob("cgroup.procs"):
            with contextlib.suppress(OSError):
                for pid in procs.read_text().split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
        for directory in sorted(
            (p for p in cgroup.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)
        ):
            with contextlib.suppress(OSError):
                directory.rmdir()
        with contextlib.suppress(OSError):
            cgroup.rmdir()
        if not cgroup.exists():
            return
        time.sleep(0.1)
    raise BoxError(f"cannot remove cgroup {cgroup}: processes are left in it")


def _mounted(path: Path) -> bool:
    return path.is_dir() and os.path.ismount(path)


def _remove_run(run: Path, cgroups: list[Path]) -> None:
    """Remove a stopped run's cgroups and directory (its mounts went with its namespace)."""
    for cgroup in cgroups:
        _remove_cgroup(cgroup)
    for name in ("root", "lower", "upper"):
        if _mounted(run / name):
            raise BoxError(f"{run / name} is still mounted; leaving {run} in place")
    shutil.rmtree(run, ignore_errors=True)
    with contextlib.suppress(OSError):
        BASE.rmdir()


def reap() -> None:
    """Remove what runs whose test process was killed left behind (their container is gone)."""
    for run in BASE.glob("run.*"):
        state = run / "state.json"
        try:
            saved = json.loads(state.read_text())
        except (OSError, ValueError):
            if time.time() - run.stat().st_mtime > 600:  # never got as far as its state
                shutil.rmtree(run, ignore_errors=True)
            continue
        if Proc(saved["pid"], saved["start"]).alive():
            continue  # still running: another test run's
        with contextlib.suppress(BoxError):
            _remove_run(run, [Path(c) for c in saved["cgroups"]])


class SystemdBox:
    """One booted container: files in, commands run inside, journal out; ``close`` ends it."""

    def __init__(self, run: Path, timer: subprocess.Popen[bytes], cgroups: list[Path]) -> None:
        self.run = run
        self.units = run / "etc-system"
        """/etc/systemd/system inside (writable both ways): unit files and drop-ins."""
        self.opt = run / "opt"
        """/opt/box inside, read-only there: code, packages and files for the test."""
        self.name = f"box-{run.name.removeprefix('run.')}"
        self._timer = timer  # `timeout`: ends the container at its lifetime whatever happens
        self._cgroups = cgroups
        self._timer_proc = Proc.of(timer.pid)
        self._unshare: Proc | None = None
        self._init: Proc | None = None
        self.boot_s = 0.0
        """Seconds from launch to systemd's "running"."""

    @classmethod
    def boot(cls, lifetime_s: float = 1800.0, timeout_s: float = 60.0) -> SystemdBox:
        """Boot a container and wait until its systemd is running; raise BoxError with the
        console and failed units if it does not get there (nothing is left behind)."""
        reason = missing()
        if reason is not None:
            raise BoxError(reason)
        reap()
        BASE.mkdir(exist_ok=True)
        run = Path(tempfile.mkdtemp(prefix="run.", dir=BASE))
        for name in ("root", "lower", "upper", "etc-system", "opt"):
            (run / name).mkdir()
        (run / "opt").chmod(0o755)  # apt reads a local .deb as the _apt user
        (run / "machine-id").write_text(uuid.uuid4().hex + "\n")
        units = run / "etc-system"
        (units / "box.target").write_text(DEFAULT_TARGET)
        (units / "default.target").symlink_to("box.target")
        # /etc/machine-id is a read-only bind: committing it would fail the boot.
        (units / "systemd-machine-id-commit.service").symlink_to("/dev/null")
        cgroups = _cgroups(f"powercast-box-{run.name.removeprefix('run.')}")
        for cgroup in cgroups:
            cgroup.mkdir()
        started = time.monotonic()
        with (run / "console.log").open("wb") as console:
            # SIGKILL: SIGTERM to a systemd PID 1 means "re-execute", not "stop".
            cap = ["timeout", "-s", "KILL", "-k", "10", str(lifetime_s)]
            timer = subprocess.Popen(
                [*cap, "sh", str(SCRIPT), "outer", str(run), *map(str, cgroups)],
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        box = cls(run, timer, cgroups)
        try:
            box._save_state()
            box._wait_running(started + timeout_s)
        except BaseException:
            box.close()
            raise
        box.boot_s = time.monotonic() - started
        return box

    def _save_state(self) -> None:
        if self._timer_proc is None:
            raise BoxError(f"the container exited at once:\n{self.console()}")
        state = {
            "pid": self._timer_proc.pid,
            "start": self._timer_proc.start,
            "cgroups": [str(c) for c in self._cgroups],
        }
        (self.run / "state.json").write_text(json.dumps(state))

    def _wait_running(self, deadline: float) -> None:
        """Find the container's init (the child of unshare that is PID 1 of another pid
        namespace and runs systemd), then wait for `systemctl is-system-running`."""
        own_ns = os.readlink("/proc/self/ns/pid")
        while self._init is None:
            if self._timer.poll() is not None:
                raise BoxError(f"the container exited early:\n{self.console()}")
            if time.monotonic() > deadline:
                raise BoxError(f"the container's systemd did not start:\n{self.console()}")
            self._find_init(own_ns)
            time.sleep(0.05)
        state = ""
        while time.monotonic() < deadline:
            done = self.sh("systemctl", "is-system-running", "--wait", check=False, timeout_s=30)
            state = done.stdout.strip()
            if state in ("running", "degraded"):
                break
            time.sleep(0.2)
        if state != "running":
            failed = self.sh("systemctl", "--failed", "--no-pager", check=False).stdout
            raise BoxError(f"the container booted to {state!r}, not 'running':\n{failed}")

    def _find_init(self, own_ns: str) -> None:
        if self._unshare is None:  # timeout's child: our script, exec'ed into unshare
            kids = self._timer_proc.children() if self._timer_proc else []
            self._unshare = Proc.of(kids[0]) if kids else None
        if self._unshare is None:
            return
        for pid in self._unshare.children():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
                ns = os.readlink(f"/proc/{pid}/ns/pid")
                comm = Path(f"/proc/{pid}/comm").read_text().strip()
            except OSError:
                continue
            nspid = next(ln for ln in status.splitlines() if ln.startswith("NSpid:")).split()
            if nspid[-1] == "1" and ns != own_ns and comm == "systemd":
                self._init = Proc.of(pid)

    def console(self) -> str:
        """What the container printed on its console (the mount script's errors)."""
        try:
            return (self.run / "console.log").read_text(errors="replace")
        except OSError:
            return ""

    def sh(
        self,
        *argv: str,
        input: str | None = None,
        check: bool = True,
        timeout_s: float = 60.0,
        cwd: str = "/",
    ) -> subprocess.CompletedProcess[str]:
        """Run argv inside (every namespace of the container, a clean environment, as root,
        in cwd), bounded by timeout_s; raise BoxError with its output when check and it
        exits non-zero."""
        init = self._init
        if init is None or not init.alive():
            raise BoxError(f"the container is gone; cannot run {argv}:\n{self.console()}")
        if os.readlink(f"/proc/{init.pid}/ns/pid") == os.readlink("/proc/self/ns/pid"):
            raise BoxError(f"pid {init.pid} is not in the container: refusing to enter it")
        # The bound runs inside: killing nsenter from out here would orphan the command.
        command = ["nsenter", "-t", str(init.pid), "-m", "-u", "-i", "-n", "-p", "-C", "--"]
        command += ["env", "-i", f"PATH={PATH}", "LANG=C.UTF-8", "TERM=dumb", "SYSTEMD_COLORS=0"]
        command += ["env", "-C", cwd, "timeout", "-k", "5", str(timeout_s), *argv]
        done = subprocess.run(
            command,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout_s + 20,
            check=False,
        )
        if check and done.returncode != 0:
            raise BoxError(
                f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
            )
        return done

    def close(self) -> None:
        """Power the container off (killed after 10 s if it does not stop), then remove its
        cgroup and directory. Safe to call more than once."""
        if self._timer.poll() is None and self._init is not None and self._init.alive():
            with contextlib.suppress(BoxError, subprocess.TimeoutExpired):
                self.sh("systemctl", "poweroff", "--no-block", check=False, timeout_s=10)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._timer.wait(10)
        for proc in (self._init, self._unshare):
            if proc is not None:
                proc.kill()
        if self._timer.poll() is None:
            self._timer.kill()
        self._timer.wait(30)
        _remove_run(self.run, self._cgroups)

    def __enter__(self) -> SystemdBox:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

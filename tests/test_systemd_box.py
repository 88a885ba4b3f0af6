"""The test container itself (tests/systemd_box.py): it boots a real systemd, keeps the host
untouched, and is gone afterwards whatever happened, leaving no process, cgroup or file."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from systemd_box import BoxError, Proc, SystemdBox, missing, skip_or_fail

pytestmark = pytest.mark.system


@pytest.fixture(autouse=True)
def _needs_a_box() -> None:
    reason = missing()
    if reason is not None:
        skip_or_fail(reason)


def gone(box: SystemdBox, init: Proc) -> None:
    """Nothing of the box is left: its init, cgroup and directory."""
    assert not init.alive()
    assert not box.run.exists()
    assert not any(cgroup.exists() for cgroup in box._cgroups)


class TestSystemdBox:
    def test_boots_systemd_and_tears_down_on_failure(self) -> None:
        """A booted box runs systemd as PID 1 with journald; an error in the with block
        still ends it: no process, cgroup or run directory is left."""
        with pytest.raises(ZeroDivisionError), SystemdBox.boot() as box:  # noqa: PT012
            init = box._init
            assert init is not None
            assert box.sh("cat", "/proc/1/comm").stdout == "systemd\n"
            assert box.sh("systemctl", "is-active", "systemd-journald").stdout == "active\n"
            assert box.sh("systemctl", "is-system-running").stdout == "running\n"
            print(f"booted in {box.boot_s:.2f} s")
            _ = 1 / 0
        assert init is not None
        gone(box, init)

    def test_host_untouched(self, tmp_path: Path) -> None:
        """Writes inside stay inside; the host's /tmp is not seen; opt/ is /opt/box, read-only."""
        marker = Path("/var/tmp") / f"powercast-box-{os.getpid()}"
        (tmp_path / "host-only").write_text("x")
        with SystemdBox.boot() as box:
            (box.opt / "given").write_text("from the test\n")
            assert box.sh("cat", "/opt/box/given").stdout == "from the test\n"
            assert box.sh("touch", "/opt/box/nope", check=False).returncode != 0
            box.sh("touch", str(marker))
            assert box.sh("test", "-e", str(tmp_path / "host-only"), check=False).returncode == 1
            links = box.sh("ip", "-o", "link").stdout.splitlines()
            assert [line.split(": ")[1] for line in links] == ["lo"]  # loopback only
        assert not marker.exists()

    def test_lifetime_ends_a_forgotten_box(self) -> None:
        """Past its lifetime the container is killed even if nobody closes it; close() then
        only cleans up, and a command says the container is gone."""
        box = SystemdBox.boot(lifetime_s=2.0)
        init = box._init
        assert init is not None
        try:
            deadline = time.monotonic() + 30
            while init.alive() and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not init.alive()
            with pytest.raises(BoxError, match="the container is gone"):
                box.sh("true")
        finally:
            box.close()
        gone(box, init)

"""README's deploy quick start works as printed: its block, run line by line as root on a
freshly booted systemd (tests/systemd_box.py) with the .deb of this checkout beside it,
leaves the controller running and `powercast status` showing it."""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from systemd_box import SystemdBox, booted

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"<!-- quickstart -->\n```sh\n(.*?)```\n<!-- /quickstart -->", re.DOTALL)


def quickstart() -> list[str]:
    """The commands of README's quick start, one per line, without blanks and comment lines."""
    found = BLOCK.search(README.read_text())
    assert found is not None, "README.md has no ```sh block between the quickstart markers"
    lines = [line.strip() for line in found[1].splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


@pytest.mark.unit
class TestBlock:
    def test_each_line_stands_alone(self) -> None:
        """Every line is a whole command: no continuation, here-document or cd that a
        line-by-line run (and an operator pasting one line) would break."""
        for line in quickstart():
            assert not line.endswith("\\"), line
            assert "<<" not in line, line
            assert not line.startswith("cd "), line

    def test_covers_the_deploy(self) -> None:
        """It installs the package, makes a key, checks the config, starts and watches."""
        text = "\n".join(quickstart())
        for step in (
            "apt install ./powercast_",
            "powercast keygen ",
            "powercast config check",
            "systemctl enable --now ",
            "journalctl -u powercast-controller",
            "powercast status",
        ):
            assert step in text, step


@pytest.fixture(scope="module")
def node(deb: Path) -> Iterator[SystemdBox]:
    """A fresh node: a booted systemd with nothing of powercast on it, the .deb in /opt/box."""
    with booted() as box:
        shutil.copy(deb, box.opt / deb.name)
        yield box


@pytest.mark.system
class TestQuickstart:
    def test_runs_as_printed(self, node: SystemdBox) -> None:
        """Each line exits 0 in the .deb's directory; then both daemons are active, the
        controller's journal says it is ready, and `powercast status` shows the zone
        normal with fans on, from the publisher's fresh data."""
        transcript = ""
        outputs: dict[str, str] = {}
        for line in quickstart():
            done = node.sh("bash", "-c", line, check=False, timeout_s=180, cwd="/opt/box")
            transcript += f"# {line}\n{done.stdout}{done.stderr}[exit {done.returncode}]\n"
            assert done.returncode == 0, transcript
            outputs[line] = done.stdout
        print(transcript)
        active = node.sh("systemctl", "is-active", "powercast-controller", "powercast-publisher")
        assert active.stdout.split() == ["active", "active"]
        enabled = node.sh("systemctl", "is-enabled", "powercast-controller").stdout.strip()
        assert enabled == "enabled"
        journal = next(out for line, out in outputs.items() if line.startswith("journalctl"))
        assert "ready role=controller" in journal, transcript
        status = next(out for line, out in outputs.items() if line == "powercast status")
        assert status.startswith("controller on "), transcript

        deadline = time.monotonic() + 20  # the first announcement may still be on its way
        while True:
            status = node.sh("powercast", "status").stdout
            if "NORMAL (fans on)" in status or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert "zone default: NORMAL (fans on)" in status, status
        assert re.search(r"^  \S+\s+fresh\s", status, re.MULTILINE), status
        actuator = r"actuator default/0\(command\): on 100 % \(wants on 100 %\), ok"
        assert re.search(actuator, status), status

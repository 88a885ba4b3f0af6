"""Shared test setup: the hypothesis profiles, and every test marked ``unit`` or ``system``.

HYPOTHESIS_PROFILE chooses one: ``ci`` (the default) keeps every property test to a few
hundred examples so the whole suite stays quick; ``long`` runs 200,000 examples per
property, for a soak on demand::

    HYPOTHESIS_PROFILE=long .venv/bin/pytest tests/test_wire_properties.py

A test with its own ``@settings(max_examples=...)`` keeps that count under either profile.

Each test carries exactly one of the markers ``unit`` (in this process: no sockets, no
subprocesses, no real devices; tmp_path files are fine) and ``system`` (processes, sockets,
namespaces, systemd, packages, real servers), from ``pytestmark`` or on its class or
function; collection fails otherwise. ``sh tests/run -m unit`` runs the quick ones.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from systemd_box import skip_or_fail

ROOT = Path(__file__).resolve().parents[1]

settings.register_profile("ci", max_examples=200, deadline=None, print_blob=True)
settings.register_profile(
    "long",
    max_examples=200_000,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],  # generation cost is the point of a soak
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


KINDS = ("unit", "system")


@pytest.hookimpl(tryfirst=True)  # before -m deselects: every collected test is checked
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Refuse to run when a test is marked neither ``unit`` nor ``system``, or both; and
    leave out ``slow`` tests unless the -m expression names them (``-m unit`` replaces
    addopts' ``-m "not slow"``, yet stays quick)."""
    wrong = []
    for item in items:
        kinds = {kind for kind in KINDS if item.get_closest_marker(kind) is not None}
        if len(kinds) != 1:
            wrong.append(f"  {item.nodeid}: {' and '.join(sorted(kinds)) or 'neither'}")
    if wrong:
        raise pytest.UsageError(
            "each test needs exactly one of the markers unit or system"
            " (pytestmark = pytest.mark.unit, or on its class or function):\n" + "\n".join(wrong)
        )
    if "slow" not in (config.option.markexpr or ""):
        slow = [item for item in items if item.get_closest_marker("slow") is not None]
        if slow:
            config.hook.pytest_deselected(items=slow)
            items[:] = [item for item in items if item.get_closest_marker("slow") is None]


@pytest.fixture(scope="session")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The .deb built from this checkout by packaging/build-deb, once per session."""
    if not shutil.which("dpkg-deb"):
        skip_or_fail("needs dpkg-deb: apt-get install dpkg (it builds the package)")
    out = tmp_path_factory.mktemp("deb")
    # The same xz package, compressed at level 1 (dpkg-deb's own default is 6): 1 s, not 5.
    env = {"DPKG_DEB_COMPRESSOR_LEVEL": "1", **os.environ}
    built = subprocess.run(
        ["sh", str(ROOT / "packaging" / "build-deb"), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, f"build-deb failed:\n{built.stdout}\n{built.stderr}"
    return Path(built.stdout.strip().splitlines()[-1])

"""The shipped Grafana dashboard and Prometheus rules (monitoring/), against the real tools.

promtool checks the rules and runs their unit tests: each alert fires in its bad case and
stays quiet in its good one. Then a real Prometheus (Debian's package) on loopback, with
the rules loaded, scrapes real daemons: a controller, a publisher and a relay with its
broker. Every dashboard query and every series an alert watches must return data, and
every rule must be healthy. Without prometheus, promtool or mosquitto these tests skip,
saying why; .ci/run sets POWERCAST_PROMETHEUS_TESTS=require so that they fail instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from sites import Mosquitto, free_port_tcp, mosquitto_missing, relay_config

from powercast import wire

from harness import (
    GROUP,
    Daemon,
    controller_config,
    end,
    free_port,
    make_keys,
    publisher_config,
    running,
    set_reading,
    write_toml,
)

ROOT = Path(__file__).resolve().parent.parent
MONITORING = ROOT / "monitoring"
DASHBOARD = MONITORING / "grafana" / "powercast.json"
RULES = MONITORING / "prometheus" / "powercast.rules.yml"
RULE_TESTS = MONITORING / "prometheus" / "powercast.rules.test.yml"
JOBS = ("powercast-controller", "powercast-publisher", "powercast-relay")
"""The scrape job names the rules expect (docs/monitoring.md)."""
GRAFANA_MACROS = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}
"""Grafana's built-in variables, as Grafana would fill them for a query."""
BOOT_S = 15.0
FIRST_SCRAPE_S = 30.0
"""Prometheus hands targets to its scraper on a 5 s ticker: the first scrape comes 5-6 s
after its start; the rest is room for a loaded machine."""


def require(reason: str | None) -> None:
    """Skip with ``reason``; under POWERCAST_PROMETHEUS_TESTS=require, fail instead."""
    if reason is None:
        return
    if os.environ.get("POWERCAST_PROMETHEUS_TESTS") == "require":
        pytest.fail(f"{reason}, and POWERCAST_PROMETHEUS_TESTS=require")
    pytest.skip(reason)


def tool(name: str) -> str:
    """The path of prometheus or promtool, or a skip (a failure when required)."""
    found = shutil.which(name) or (
        f"/usr/bin/{name}" if os.path.exists(f"/usr/bin/{name}") else None
    )
    if found is None:
        require(f"{name} is not installed (.ci/run installs it: apt-get install prometheus)")
    assert found is not None
    return found


def rules() -> list[dict[str, Any]]:
    """Every rule of the rules file (alerts and recording rules)."""
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def alerts() -> list[dict[str, Any]]:
    return [rule for rule in rules() if "alert" in rule]


def dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return doc


def panels(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside rows too."""
    for panel in doc["panels"]:
        yield panel
        yield from panel.get("panels", [])


def panel_queries(doc: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target of every panel."""
    return [
        (panel["title"], target["expr"])
        for panel in panels(doc)
        for target in panel.get("targets", [])
    ]


def concrete(expr: str) -> str:
    """A dashboard query as Prometheus can run it: Grafana's macros filled in and each
    template variable a regex that matches anything (the selectors use =~)."""
    for macro, value in GRAFANA_MACROS.items():
        expr = expr.replace(macro, value)
    return re.sub(r"\$\{?[A-Za-z_]\w*\}?", ".*", expr)


SELECTOR = re.compile(r"\b((?:powercast_|up\b)[A-Za-z0-9_:]*)\s*(\{[^}]*\})?")
"""A vector selector on one of ours (or up) with its label matchers."""


def selectors(expr: str) -> list[str]:
    """The vector selectors in ``expr``: what an alert watches."""
    return sorted({name + (matchers or "") for name, matchers in SELECTOR.findall(expr)})


# --- the files themselves ------------------------------------------------------------------


@pytest.mark.unit
class TestDashboardFile:
    def test_datasource_is_an_input_and_variables_filter_instance_and_zone(self) -> None:
        """The datasource is the ${DS_PROMETHEUS} input; instance and zone are variables
        (multi, with All) and every query filters by instance."""
        doc = dashboard()
        (source,) = doc["__inputs"]
        assert (source["name"], source["type"], source["pluginId"]) == (
            "DS_PROMETHEUS", "datasource", "prometheus",
        )  # fmt: skip
        variables = {v["name"]: v for v in doc["templating"]["list"]}
        for name in ("instance", "zone"):
            assert variables[name]["type"] == "query"
            assert variables[name]["datasource"]["uid"] == "${DS_PROMETHEUS}"
            assert variables[name]["multi"]
            assert variables[name]["includeAll"]
        for title, expr in panel_queries(doc):
            assert 'instance=~"$instance"' in expr, title
        for panel in panels(doc):
            if panel["type"] != "row":
                assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]

    def test_every_zone_metric_is_filtered_by_zone(self) -> None:
        """A query on a per-zone metric filters by the zone variable."""
        zoned = ("powercast_state", "powercast_fans_on", "powercast_on_battery", "powercast_sheds",
                 "powercast_flap_guard", "powercast_actuator", "powercast_zone_")  # fmt: skip
        for title, expr in panel_queries(dashboard()):
            for selector in selectors(expr):
                if selector.startswith(zoned):
                    assert 'zone=~"$zone"' in selector, (title, selector)

    def test_panel_ids_are_unique(self) -> None:
        """Grafana keys panels by id: two with one id would hide one of them."""
        ids = [panel["id"] for panel in panels(dashboard())]
        assert len(ids) == len(set(ids))


@pytest.mark.unit
class TestRulesFile:
    def test_every_alert_has_a_for_a_runbook_and_a_severity(self) -> None:
        """Each alert says how long it waits, what to do, and how urgent it is."""
        for alert in alerts():
            assert "for" in alert, alert["alert"]
            assert alert["annotations"]["runbook"].strip(), alert["alert"]
            assert alert["annotations"]["summary"].strip(), alert["alert"]
            assert alert["labels"]["severity"] in ("critical", "warning"), alert["alert"]

    def test_every_alert_has_a_test_that_fires_and_one_that_stays_quiet(self) -> None:
        """For each alert the promtool tests expect it firing at some time and quiet
        (no alert at all) at another: an inverted expression cannot pass both."""
        doc = yaml.safe_load(RULE_TESTS.read_text())
        fires: set[str] = set()
        quiet: set[str] = set()
        for test in doc["tests"]:
            for case in test.get("alert_rule_test", []):
                (fires if case["exp_alerts"] else quiet).add(case["alertname"])
        names = {alert["alert"] for alert in alerts()}
        assert names - fires == set(), "alerts never expected to fire"
        assert names - quiet == set(), "alerts never expected to stay quiet"

    def test_the_near_limit_band_is_the_documented_constant(self) -> None:
        """The fans-off alert's band is NEAR_LIMIT_C = 2 °C, as its comment says."""
        (rule,) = [a for a in alerts() if a["alert"] == "PowercastFansOffNearLimit"]
        assert "powercast_temperature_limit_celsius - 2)" in rule["expr"]
        assert "NEAR_LIMIT_C = 2 °C" in RULES.read_text()


# --- promtool -----------------------------------------------------------------------------


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("promtool"), *args], capture_output=True, text=True, timeout=60, check=False
    )


def cases_of(alert: str) -> dict[str, Any]:
    """The promtool test file cut down to the cases about ``alert``."""
    doc = yaml.safe_load(RULE_TESTS.read_text())
    kept = []
    for test in doc["tests"]:
        cases = [c for c in test.get("alert_rule_test", []) if c["alertname"] == alert]
        if cases:
            kept.append({**{k: v for k, v in test.items() if k != "promql_expr_test"},
                         "alert_rule_test": cases})  # fmt: skip
    return {**doc, "rule_files": [str(RULES)], "tests": kept}


@pytest.mark.system
class TestPromtool:
    def test_check_rules(self) -> None:
        """promtool finds the rules file valid."""
        done = promtool("check", "rules", str(RULES))
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"SUCCESS: {len(rules())} rules found" in done.stdout

    def test_all_rule_tests_pass(self) -> None:
        """The whole test file passes, recording rules' expression tests included."""
        done = promtool("test", "rules", str(RULE_TESTS))
        assert done.returncode == 0, done.stdout + done.stderr

    @pytest.mark.parametrize("alert", [a["alert"] for a in alerts()])
    def test_alert_fires_in_its_bad_case_and_stays_quiet_in_its_good_case(
        self, alert: str, tmp_path: Path
    ) -> None:
        """The alert's own cases, alone: it fires where expected and nowhere else."""
        cut = tmp_path / "cut.test.yml"
        cut.write_text(yaml.safe_dump(cases_of(alert)))
        done = promtool("test", "rules", str(cut))
        assert done.returncode == 0, done.stdout + done.stderr

    def test_an_inverted_alert_fails_its_tests(self, tmp_path: Path) -> None:
        """The tests catch an inverted expression: with fans_on == 1 in place of == 0 the
        near-limit alert's tests fail."""
        text = RULES.read_text().replace("(powercast_fans_on == 0)", "(powercast_fans_on == 1)")
        assert text != RULES.read_text()
        inverted = tmp_path / "inverted.rules.yml"
        inverted.write_text(text)
        doc = cases_of("PowercastFansOffNearLimit")
        doc["rule_files"] = [str(inverted)]
        cut = tmp_path / "cut.test.yml"
        cut.write_text(yaml.safe_dump(doc))
        done = promtool("test", "rules", str(cut))
        assert done.returncode == 1, done.stdout + done.stderr


# --- a real Prometheus scraping real daemons -----------------------------------------------


class Prometheus:
    """Debian's prometheus on 127.0.0.1 and a free port, storage in ``workdir``."""

    def __init__(self, workdir: Path, targets: dict[str, str], *, interval: str = "1s") -> None:
        self.port = free_port_tcp()
        self.workdir = workdir
        self.log = workdir / "prometheus.log"
        config = {
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "rule_files": [str(RULES)],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": [address]}]}
                for job, address in targets.items()
            ],
        }
        self.config = workdir / "prometheus.yml"
        self.config.write_text(yaml.safe_dump(config))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = [
            tool("prometheus"),
            f"--config.file={self.config}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
        ]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=log)
        deadline = time.monotonic() + BOOT_S
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"prometheus exited: {self.log.read_text()[-2000:]}"
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(self.url("/-/ready"), timeout=1) as reply,
            ):
                if reply.status == 200:
                    return
            time.sleep(0.05)
        raise AssertionError(f"prometheus not ready in {BOOT_S} s: {self.log.read_text()}")

    def stop(self) -> None:
        end(self.proc, 10.0)

    def url(self, path: str, **query: str) -> str:
        tail = f"?{urllib.parse.urlencode(query)}" if query else ""
        return f"http://127.0.0.1:{self.port}{path}{tail}"

    def api(self, path: str, **query: str) -> Any:
        with urllib.request.urlopen(self.url(path, **query), timeout=10) as reply:
            doc = json.load(reply)
        assert doc["status"] == "success", doc
        return doc["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector ``expr`` gives now (an error names the query)."""
        try:
            data = self.api("/api/v1/query", query=expr)
        except urllib.error.HTTPError as err:
            raise AssertionError(f"{expr}: {err.read().decode()}") from err
        result: list[dict[str, Any]] = data["result"]
        return result

    def wait_until(self, expr: str, timeout: float = FIRST_SCRAPE_S) -> list[dict[str, Any]]:
        """Poll until ``expr`` returns series."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if got := self.query(expr):
                return got
            time.sleep(0.2)
        raise AssertionError(f"{expr}: nothing in {timeout} s; log: {self.log.read_text()[-2000:]}")


RECORD = "import sys; open(sys.argv[1], 'w').write(sys.argv[2])"
READ = "import sys; print(open(sys.argv[1]).read())"


class Stack:
    """A controller (one command actuator, an action on shedding), a publisher and a
    relay with its broker, each with [metrics] on 127.0.0.1, on a loopback group."""

    def __init__(
        self, root: Path, *, heartbeat_s: float = 0.2, policy: dict[str, Any] | None = None
    ) -> None:
        self.root = root
        self.port = port = free_port()
        self.keys = make_keys(root / "keys")
        self.reading = root / "ups.json"
        set_reading(self.reading, "online", 24.0, charge_pct=90.0)
        self.fan = fan = root / "fan"
        fan.write_text("on")
        metrics = {"listen": "127.0.0.1:0"}
        self.controller = write_toml(
            root / "c.toml",
            controller_config(
                port,
                self.keys,
                persist={"state_dir": ""},
                policy={"shed_after_s": 0.3, "restore_after_s": 0.3, **(policy or {})},
                control={"socket": str(root / "c.sock")},
                metrics=metrics,
                actuators=[{
                    "kind": "command",
                    "on_argv": [sys.executable, "-c", RECORD, str(fan), "on"],
                    "off_argv": [sys.executable, "-c", RECORD, str(fan), "off"],
                    "verify_argv": [sys.executable, "-c", READ, str(fan)],
                }],
                actions=[{"on": "shedding", "argv": [sys.executable, "-c", "pass"]}],
                log={"format": "json"},
            ),
        )  # fmt: skip
        self.publisher = write_toml(
            root / "p.toml",
            publisher_config(
                port,
                self.keys,
                self.reading,
                heartbeat_s=heartbeat_s,
                control={"socket": str(root / "p.sock")},
                metrics=metrics,
            ),
        )
        self.broker = Mosquitto(root)
        relay = relay_config(
            {"group": GROUP, "port": port, "interface": "127.0.0.1"},
            "127.0.0.1",
            self.broker.port,
            topic=f"powercast/monitoring-{port}",
            control={"socket": str(root / "r.sock")},
            metrics=metrics,
        )
        self.relay = write_toml(root / "r.toml", relay)

    @contextlib.contextmanager
    def running(self) -> Iterator[dict[str, Daemon]]:
        """The three daemons, the controller in normal; yields them by job name."""
        self.broker.start()
        try:
            with (
                running("control", "--config", str(self.controller)) as ctl,
                running("publish", "--config", str(self.publisher)) as pub,
                running("relay", "--config", str(self.relay)) as relay,
            ):
                ctl.wait_for("transition", timeout=BOOT_S, state="normal")
                relay.wait_for("broker_connected", timeout=BOOT_S)
                yield {"powercast-controller": ctl, "powercast-publisher": pub,
                       "powercast-relay": relay}  # fmt: skip
        finally:
            self.broker.stop()


def logged(daemon: Daemon, event: str, **fields: Any) -> dict[str, Any]:
    """The event if the daemon logged it already (another wait may have passed it), else
    the next one."""
    for seen in daemon.seen:
        if seen.get("event") == event and all(seen.get(k) == v for k, v in fields.items()):
            return seen
    return daemon.wait_for(event, timeout=BOOT_S, **fields)


def metrics_address(daemon: Daemon) -> str:
    return str(logged(daemon, "metrics_listening")["address"])


@contextlib.contextmanager
def scraped(
    workdir: Path, daemons: dict[str, Daemon], interval: str = "1s"
) -> Iterator[Prometheus]:
    """A Prometheus scraping ``daemons`` (job name -> daemon), with the rules loaded."""
    targets = {job: metrics_address(daemon) for job, daemon in daemons.items()}
    prometheus = Prometheus(workdir, targets, interval=interval)
    prometheus.start()
    try:
        for job in targets:
            prometheus.wait_until(f'up{{job="{job}"}} == 1')
        yield prometheus
    finally:
        prometheus.stop()


@pytest.fixture(scope="module")
def live() -> Iterator[Prometheus]:
    """Real daemons through an outage (shedding, an action, the actuator moved, power
    back), scraped by a real Prometheus with the rules loaded."""
    tool("prometheus")
    require(mosquitto_missing())
    with tempfile.TemporaryDirectory(prefix="powercast-prom-") as tmp:
        root = Path(tmp)
        stack = Stack(root)
        with stack.running() as daemons, scraped(root, daemons) as prometheus:
            ctl = daemons["powercast-controller"]
            set_reading(stack.reading, "on_battery", 24.0, charge_pct=80.0)
            logged(ctl, "action", state="shedding")
            logged(ctl, "actuator_set", position="off")
            prometheus.wait_until('powercast_action_duration_seconds_count{state="shedding"} > 0')
            set_reading(stack.reading, "online", 24.0, charge_pct=80.0)
            ctl.wait_for("transition", timeout=BOOT_S, state="normal")
            prometheus.wait_until('powercast_actuator_position{position="on"} == 1')
            # Every recording rule has been evaluated at least once.
            for rule in rules():
                if "record" in rule:
                    prometheus.wait_until(rule["record"])
            yield prometheus


@pytest.mark.system
class TestLivePrometheus:
    def test_every_dashboard_query_returns_series(self, live: Prometheus) -> None:
        """Each panel's query, variables as match-all, gives data from real daemons."""
        empty = [
            (title, expr) for title, expr in panel_queries(dashboard())
            if not live.query(concrete(expr))
        ]  # fmt: skip
        assert empty == []

    def test_every_alert_watches_series_that_exist(self, live: Prometheus) -> None:
        """Each selector in each alert's expression finds series: no alert is quiet only
        because it watches a metric name that does not exist."""
        missing = [
            (alert["alert"], selector)
            for alert in alerts()
            if "absent(" not in alert["expr"]
            for selector in selectors(alert["expr"])
            if not live.query(selector)
        ]
        assert missing == []
        for alert in alerts():
            live.query(alert["expr"])  # each expression runs (an error would raise)

    def test_rules_are_loaded_and_healthy(self, live: Prometheus) -> None:
        """/api/v1/rules lists every rule of the file, each healthy, none in error."""
        groups = live.api("/api/v1/rules")["groups"]
        loaded = {rule["name"]: rule for group in groups for rule in group["rules"]}
        names = {rule.get("alert") or rule["record"] for rule in rules()}
        assert set(loaded) == names
        unhealthy = {n: r.get("lastError") for n, r in loaded.items() if r["health"] != "ok"}
        assert unhealthy == {}

    def test_a_healthy_stack_raises_no_alert(self, live: Prometheus) -> None:
        """With everything running and power back, no powercast alert is pending or firing."""
        assert live.query('ALERTS{alertname=~"Powercast.*"}') == []


def forge(port: int) -> None:
    """An unsigned announcement on the loopback group: what someone without the key sends."""
    message = wire.Announcement(
        publisher="ups-a",
        epoch=1,
        seq=1,
        change=1,
        sent=time.time(),
        tal=3.0,
        power=wire.Power(wire.PowerStatus.ON_BATTERY),
        temperatures={},
    )
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
        sock.sendto(wire.encode(message), (GROUP, port))


def raised(prometheus: Prometheus, alert: str, state: str = "pending|firing") -> dict[str, str]:
    """The labels of ``alert`` once Prometheus has it pending or firing (polled)."""
    found = prometheus.wait_until(f'ALERTS{{alertname="{alert}", alertstate=~"{state}"}}')
    labels: dict[str, str] = found[0]["metric"]
    return labels


@pytest.mark.system
class TestAlertsOnRealFaults:
    def test_each_fault_raises_its_alert(self, tmp_path: Path) -> None:
        """Real faults, one after another, make the real Prometheus raise the alert meant
        for each (firing for the ones without a wait, pending for the others): a forged
        datagram, a failing actuator, a flapping mains, a lost broker, a silent publisher
        and a stopped controller."""
        tool("prometheus")
        require(mosquitto_missing())
        stack = Stack(tmp_path, policy={"flap_max_sheds": 1})
        with stack.running() as daemons, scraped(tmp_path, daemons) as prometheus:
            ctl = daemons["powercast-controller"]
            forge(stack.port)
            forged = raised(prometheus, "PowercastForgedOrReplayedDatagrams", "firing")
            assert (forged["reason"], forged["job"]) == ("unsigned", "powercast-controller")

            stack.fan.unlink()
            stack.fan.mkdir()  # the fan's command cannot write its file: it fails
            set_reading(stack.reading, "on_battery", 24.0, charge_pct=80.0)
            ctl.wait_for("actuator_failed", timeout=BOOT_S)
            for alert in ("PowercastActuatorFailed", "PowercastActuatorUnknown"):
                assert raised(prometheus, alert)["actuator"] == "default/0(command)"
            stack.fan.rmdir()
            stack.fan.write_text("on")
            ctl.wait_for("actuator_set", timeout=BOOT_S, position="off")
            set_reading(stack.reading, "online", 24.0, charge_pct=80.0)
            ctl.wait_for("transition", timeout=BOOT_S, state="normal")
            set_reading(stack.reading, "on_battery", 24.0, charge_pct=80.0)  # a second outage
            held = raised(prometheus, "PowercastFlapGuardHolding", "firing")
            assert held["zone"] == "default"

            stack.broker.kill()
            raised(prometheus, "PowercastRelayDisconnected")
            daemons["powercast-publisher"].stop()
            assert raised(prometheus, "PowercastPublisherSilent")["publisher"] == "ups-a"
            assert raised(prometheus, "PowercastFailsafe")["zone"] == "default"
            ctl.stop()
            raised(prometheus, "PowercastControllerDown")

"""Config schema, error wording, and the `powercast config` commands."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest
import tomli_w

from powercast import config as cfg
from powercast.auth import fingerprint
from powercast.cli import main
from powercast.programs import DEFAULT_PATH
from powercast.secrets import keygen, load_keyring

from harness import make_keys, running

ROOT = Path(__file__).resolve().parents[1]


def error(text: str, role: cfg.Role | None = None) -> str:
    with pytest.raises(cfg.ConfigError) as info:
        cfg.parse(text, "f.toml", role)
    return str(info.value)


@pytest.mark.unit
class TestExamples:
    @pytest.mark.parametrize("name", ["publisher.toml", "controller.toml", "relay.toml"])
    def test_shipped_examples_are_valid(self, name: str) -> None:
        """The commented files in config/ load without error, in their own role."""
        config = cfg.load(ROOT / "config" / name)
        assert config.role == name.removesuffix(".toml")

    def test_commented_relay_keys_are_valid(self) -> None:
        """config/relay.toml with its commented-out keys and tables switched on still loads."""
        text = (ROOT / "config" / "relay.toml").read_text()
        on = re.sub(r"^# (?=\[\w+\]$|\w+ = )", "", text, flags=re.MULTILINE)
        config = cfg.parse(on, "relay.toml")
        assert isinstance(config, cfg.RelayConfig)
        assert (config.broker.username, config.broker.client_id) == ("powercast", "relay-hall-a")
        assert config.metrics.listen == "127.0.0.1:9303"

    @pytest.mark.parametrize("role", ["publisher", "controller"])
    def test_defaults_round_trip_through_toml(self, role: cfg.Role) -> None:
        """What `config init` prints loads back to the same config."""
        assert cfg.parse(cfg.dumps(cfg.defaults(role)), "init") == cfg.defaults(role)


@pytest.mark.unit
class TestErrors:
    def test_wrong_type_names_key_expectation_and_value(self) -> None:
        """A wrong type says the key path, what was expected and what was found."""
        assert error('role = "controller"\n[policy]\ntemp_high_c = "hot"') == (
            'f.toml: policy.temp_high_c: expected a number, got "hot"'
        )

    def test_unknown_key_lists_the_known_ones(self) -> None:
        """A typo is refused, with the keys that table accepts."""
        message = error('role = "controller"\n[policy]\ntemp_hihg_c = 3')
        assert message.startswith("f.toml: policy: unknown key 'temp_hihg_c' (expected one of: ")
        assert "temp_high_c" in message

    def test_unknown_key_in_a_source_lists_that_kinds_keys(self) -> None:
        """Inside a tagged table the known keys are those of its kind."""
        message = error('role = "publisher"\n[[sources]]\nkind = "file"\npth = "x"')
        assert (
            message
            == "f.toml: sources[0]: unknown key 'pth' (expected one of: kind, path, interval_s)"
        )

    def test_missing_required_key(self) -> None:
        """A missing required key is named with its full path."""
        assert error('role = "publisher"\n[[sources]]\nkind = "file"') == (
            "f.toml: sources[0].path: missing (this key is required)"
        )

    def test_bad_choice_lists_the_choices(self) -> None:
        """A value outside a fixed set lists the set."""
        assert error('role = "controller"\n[[actions]]\non = "off"\nargv = ["x"]') == (
            "f.toml: actions[0].on: expected one of 'failsafe', 'normal', 'on_battery',"
            " 'shedding', 'thermal_override', 'manual_on', 'manual_off', got \"off\""
        )
        kind = error('role = "publisher"\n[[sources]]\nkind = "pigeon"')
        assert kind.startswith("f.toml: sources[0].kind: expected one of 'simulated', 'file', ")
        assert kind.endswith(', got "pigeon"')

    def test_out_of_range(self) -> None:
        """Bounds are part of the message."""
        assert error('role = "controller"\n[network]\nport = 70000') == (
            "f.toml: network.port: expected an integer <= 65535, got 70000"
        )

    def test_not_a_multicast_group(self) -> None:
        """A unicast address where a group belongs is refused."""
        assert error('role = "controller"\n[network]\ngroup = "10.1.1.1"') == (
            "f.toml: network.group: expected an IPv4 or IPv6 multicast address such as"
            " 239.1.1.1, got '10.1.1.1'"
        )

    def test_ipv6_group_accepted(self) -> None:
        """IPv6 groups are valid groups."""
        config = cfg.parse('role = "controller"\n[network]\ngroup = "ff15::101"', "f")
        assert isinstance(config, cfg.ControllerConfig)
        assert config.network.group == "ff15::101"

    def test_syntax_error_has_line_and_column(self) -> None:
        """Broken TOML says where."""
        assert error('role = "controller"\n[policy\n').startswith("f.toml: TOML syntax error: ")
        assert "line 2" in error('role = "controller"\n[policy\n')

    def test_role_missing_or_wrong(self) -> None:
        """The role is required, and must be the one the command expects."""
        assert error("") == (
            'f.toml: role: missing (expected role = "publisher", "controller" or "relay")'
        )
        assert error('role = "controller"', "publisher") == (
            "f.toml: role: expected 'publisher' here, got 'controller'"
        )

    def test_unreadable_file(self, tmp_path: Path) -> None:
        """A file that is not there is one line, not a traceback."""
        with pytest.raises(cfg.ConfigError, match=r"nope.toml: cannot read: No such file"):
            cfg.load(tmp_path / "nope.toml")

    def test_timeline_out_of_order(self) -> None:
        """Simulated steps must be in time order."""
        text = (
            'role = "publisher"\n[[sources]]\nkind = "simulated"\n'
            "timeline = [{at_s = 2}, {at_s = 1}]"
        )
        assert error(text) == (
            "f.toml: sources[0].timeline: expected steps in order of at_s, got at_s [2.0, 1.0]"
        )

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            (
                '[[zones]]\nname = "a"\npolicy = {temp_high_c = "hot"}',
                'zones[0].policy.temp_high_c: expected a number, got "hot"',
            ),
            (
                '[[zones]]\nname = "a"\n[zones.policy]\nflap_max_sheds = 1.5',
                "zones[0].policy.flap_max_sheds: expected an integer, got 1.5",
            ),
            (
                '[[zones]]\nname = "a"\npolicy = "hot"',
                'zones[0].policy: expected a table, got "hot"',
            ),
            (
                '[[actuators]]\nkind = "command"\non_argv = ["a"]\noff_argv = ["b"]\n'
                'verify_argv = "x"',
                'actuators[0].verify_argv: expected a list, got "x"',
            ),
            (
                '[[zones]]\nname = "a"\n[[zones.actuators]]\nkind = "modbus"\nhost = "h"',
                "zones[0].actuators[0].coil: expected exactly one of coil or register, got neither",
            ),
        ],
    )
    def test_nested_tables_speak_like_the_top_level(self, text: str, expected: str) -> None:
        """Zones' inline policy and actuators read as top-level errors do: no schema
        types (``float | null``), no Python reprs."""
        assert error('role = "controller"\n' + text) == f"f.toml: {expected}"

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            (
                '[[sources]]\nkind = "simulated"\ntimeline = [{power = {charge_pct = "x"}}]',
                'sources[0].timeline[0].power.charge_pct: expected a number, got "x"',
            ),
            (
                '[[sources]]\nkind = "nut"\nups = 3',
                "sources[0].ups: expected a string or a list, got 3",
            ),
        ],
    )
    def test_sources_speak_like_the_top_level(self, text: str, expected: str) -> None:
        """A source's optional or either-or keys say what they take in words."""
        assert error('role = "publisher"\n' + text) == f"f.toml: {expected}"


ACTION = '[[actions]]\non = "normal"\nargv = ["/bin/true"]\n'
ACTUATOR = '[[actuators]]\nkind = "command"\non_argv = ["/bin/true"]\noff_argv = ["/bin/true"]\n'
MODBUS = '[[actuators]]\nkind = "modbus"\nhost = "127.0.0.1"\ncoil = 1\n'
COMMAND = '[[sources]]\nkind = "command"\nargv = ["/bin/true"]\n'
NUT = '[[sources]]\nkind = "nut"\nups = "ups"\n'
SNMP = '[[sources]]\nkind = "snmp"\nhost = "127.0.0.1"\ncommunity = "public"\n'
FILE = '[[sources]]\nkind = "file"\npath = "/dev/null"\n'


@pytest.mark.unit
class TestWhatTheDaemonsCanHonour:
    def test_tal_beyond_the_wire_names_both_keys_product_and_limit(self) -> None:
        """heartbeat_s * tal_factor must fit the TAL field's bound (one day)."""
        assert error('role = "publisher"\nheartbeat_s = 3600\ntal_factor = 100\n') == (
            "f.toml: tal_factor: expected heartbeat_s * tal_factor (each announcement's TAL)"
            " at most 86400 s, the most the wire carries, got 3600 * 100 = 360000 s"
        )
        ok = cfg.parse('role = "publisher"\nheartbeat_s = 864\ntal_factor = 100\n', "f")
        assert isinstance(ok, cfg.PublisherConfig)

    def test_tal_limit_is_the_wires(self) -> None:
        """The limit is read from wire.py's Announcement, so the two cannot drift apart."""
        assert cfg.MAX_TAL_S == 86_400.0

    @pytest.mark.parametrize(
        ("text", "key", "limit"),
        [
            ('role = "controller"\n' + ACTION, "actions[0].timeout_s", 3600.0),
            ('role = "controller"\n' + ACTUATOR, "actuators[0].timeout_s", 3600.0),
            ('role = "controller"\n' + MODBUS, "actuators[0].timeout_s", 3600.0),
            ('role = "publisher"\n' + COMMAND, "sources[0].timeout_s", 3600.0),
            ('role = "publisher"\n' + COMMAND, "sources[0].interval_s", 86400.0),
            ('role = "publisher"\n' + NUT, "sources[0].timeout_s", 3600.0),
            ('role = "publisher"\n' + SNMP, "sources[0].interval_s", 86400.0),
            ('role = "publisher"\n' + FILE, "sources[0].interval_s", 86400.0),
            ('role = "controller"\n[policy]\n', "policy.shed_after_s", 86400.0),
            ('role = "controller"\n[policy]\n', "policy.max_tal_s", 3600.0),
            (
                'role = "controller"\n[[zones]]\nname = "a"\n' + ACTION.replace("[[", "[[zones."),
                "zones[0].actions[0].timeout_s",
                3600.0,
            ),
        ],
    )
    @pytest.mark.parametrize("value", ["inf", "1e300", "nan"])
    def test_timeouts_and_intervals_are_finite_and_bounded(
        self, text: str, key: str, limit: float, value: str
    ) -> None:
        """inf, nan and absurd durations are refused, naming the key and the value."""
        name = key.rpartition(".")[2]
        message = error(f"{text}{name} = {value}\n")
        if value == "nan":  # fails the lower bound's comparison first
            assert re.fullmatch(
                rf"f\.toml: {re.escape(key)}: expected a number >=? 0\.0, got nan", message
            )
        else:
            assert message == f"f.toml: {key}: expected a number <= {limit}, got {float(value)!r}"

    @pytest.mark.parametrize(
        ("text", "key"),
        [
            ('role = "controller"\n' + ACTION * 3, "actions[2].argv[1]"),
            ('role = "controller"\n' + ACTUATOR, "actuators[0].on_argv[1]"),
            ('role = "publisher"\n' + COMMAND, "sources[0].argv[1]"),
        ],
    )
    def test_argv_with_nul_names_the_argument(self, text: str, key: str) -> None:
        """A NUL in an argument (no exec can pass it) is refused with the argument's key."""
        last = key.rpartition(".")[2].partition("[")[0]
        lines = text.splitlines()
        for i in reversed(range(len(lines))):
            if lines[i].startswith(f"{last} = "):
                lines[i] = f'{last} = ["/bin/echo", "a\\u0000b"]'
                break
        assert error("\n".join(lines)) == (
            f"f.toml: {key}: expected text without NUL characters (no program, path or"
            ' protocol can carry one), got "a\\u0000b"'
        )

    def test_nul_anywhere_names_the_key(self) -> None:
        """A NUL in any string (a path, a key) is refused too."""
        assert error('role = "controller"\n[persist]\nstate_dir = "/var/\\u0000"').startswith(
            "f.toml: persist.state_dir: expected text without NUL characters"
        )

    def test_nul_in_a_key_is_shown_escaped(self) -> None:
        """A NUL in a table's key is named with the NUL escaped, never printed raw."""
        text = 'role = "publisher"\n[[sources]]\nkind = "hwmon"\nrename = {"a\\u0000" = "b"}'
        message = error(text)
        assert message.startswith("f.toml: sources[0].rename.a\\u0000: expected text without")
        assert "\0" not in message

    def test_empty_argv_or_program_names_the_key(self) -> None:
        """An empty argv, or an empty program name, is refused with its key."""
        empty = ACTION.replace('["/bin/true"]', "[]")
        assert error('role = "controller"\n' + ACTION + empty) == (
            "f.toml: actions[1].argv: expected a list of length >= 1, got []"
        )
        blank = ACTION.replace('["/bin/true"]', '["", "x"]')
        assert error('role = "controller"\n' + blank) == (
            'f.toml: actions[0].argv[0]: expected a string of length >= 1, got ""'
        )


@pytest.mark.unit
class TestNesting:
    @pytest.mark.parametrize(
        "value",
        ["[" * 100_000 + "]" * 100_000, "{a = " * 100_000 + "1" + "}" * 100_000],
        ids=["arrays", "inline tables"],
    )
    def test_deep_nesting_is_an_error_naming_file_and_key(self, value: str) -> None:
        """Arrays or inline tables nested 100,000 deep are one error, not a RecursionError."""
        assert error(f'role = "controller"\n\nx = {value}\n') == (
            f"f.toml: x: nested too deep: expected arrays and inline tables at most"
            f" {cfg.MAX_NESTING} levels deep, got more (from line 3)"
        )

    def test_long_dotted_key_is_an_error(self) -> None:
        """A key of 100,000 dotted parts is refused before the parser spends memory on it."""
        message = error('role = "controller"\n[' + "a." * 100_000 + "a]\n")
        assert message == (
            f"f.toml: line 2: nested too deep: expected keys of at most {cfg.MAX_NESTING}"
            " dotted parts, got more"
        )

    def test_nesting_up_to_the_limit_parses(self) -> None:
        """Brackets and dots inside strings and comments do not count: a file nesting up to
        the limit reaches the schema, which names the key."""
        deep = "[" * cfg.MAX_NESTING + "]" * cfg.MAX_NESTING
        text = (
            'role = "controller"  # [[[[ ' + "." * 100 + "\n"
            f'a.b.c = "{"[" * 100}{"." * 100}"\n'
            f"d = '''\n{'{' * 100}'''\n"
            f"x = {deep}\n"
        )
        assert error(text).startswith("f.toml: unknown key 'a' (expected one of: ")

    def test_deep_file_is_a_config_error(self, tmp_path: Path) -> None:
        """load() of such a file raises ConfigError naming the file."""
        path = tmp_path / "deep.toml"
        path.write_text("x = " + "[" * 100_000 + "]" * 100_000)
        with pytest.raises(cfg.ConfigError, match=rf"^{re.escape(str(path))}: x: nested too deep"):
            cfg.load(path, "controller")


@pytest.mark.system
class TestCommands:
    def test_check_ok_and_bad(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """`config check` says ok per file, or the error, and exits non-zero on any error."""
        good = ROOT / "config" / "publisher.toml"
        monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(make_keys(tmp_path / "keys")))
        bad = tmp_path / "bad.toml"
        bad.write_text('role = "publisher"\nheartbeat_s = -1\n')
        assert main(["config", "check", str(good)]) == 0
        assert capsys.readouterr().out == (
            f"{good}: ok (publisher; signs with key 1 (hmac-sha256); keys in {tmp_path / 'keys'}:"
            f" key 1 fp {load_keyring(tmp_path / 'keys').fingerprints[1]} (hmac-sha256))\n"
        )
        assert main(["config", "check", str(good), str(bad)]) == 78
        captured = capsys.readouterr()
        assert captured.err == f"powercast: {bad}: heartbeat_s: expected a number >= 0.05, got -1\n"

    def test_check_shows_scheme_key_ids_and_bindings(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """`config check` of an ed25519 controller and relay names the schemes believed,
        each key id with its scheme and which keys speak for which publisher."""
        keys = tmp_path / "keys"
        keys.mkdir(mode=0o700)
        keygen(1, keys / "1.private", "ed25519")
        keygen(2, keys / "2.private", "ed25519")
        auth = {"keys_dir": str(keys), "scheme": "ed25519", "publishers": {"ups-a": [1]}}
        controller = tmp_path / "c.toml"
        controller.write_text(tomli_w.dumps({"role": "controller", "auth": auth}))
        relay = tmp_path / "r.toml"
        relay.write_text(tomli_w.dumps({"role": "relay", "auth": {**auth, "mode": "enforce"}}))
        publisher = tmp_path / "p.toml"
        publisher.write_text(
            tomli_w.dumps(
                {
                    "role": "publisher",
                    "auth": {"keys_dir": str(keys), "key_id": 2, "scheme": "ed25519"},
                }
            )
        )
        assert main(["config", "check", str(controller), str(relay), str(publisher)]) == 0
        ids = ", ".join(  # a private key shows its public key's fingerprint
            f"key {i} fp {fingerprint(bytes.fromhex((keys / f'{i}.public').read_text()))} (ed25519)"
            for i in (1, 2)
        )
        assert capsys.readouterr().out.splitlines() == [
            f"{controller}: ok (controller; auth enforce, believes ed25519; ups-a by key 1;"
            f" keys in {keys}: {ids})",
            f"{relay}: ok (relay; auth enforce, believes ed25519; ups-a by key 1;"
            f" keys in {keys}: {ids})",
            f"{publisher}: ok (publisher; signs with key 2 (ed25519); keys in {keys}: {ids})",
        ]
        (keys / "1.public").unlink()
        assert main(["config", "check", str(controller)]) == 78
        assert capsys.readouterr().err == (
            f"powercast: {keys}: auth.publishers names key 1 for 'ups-a', but there is no such"
            f" key of auth.scheme 'ed25519' (keys found: {ids.split(', ')[1]})\n"
        )

    @pytest.mark.parametrize("role", ["publisher", "controller", "relay"])
    def test_init_prints_what_check_accepts_and_runs(
        self,
        role: str,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """`config init --role R` output (a real subprocess) passes `config check` as
        printed: every program an argv names exists, the rest are commented examples,
        which load too once uncommented; CHANGE comments say what a site sets."""
        make_keys(tmp_path / "keys")
        monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path / "keys"))
        out = subprocess.run(
            [sys.executable, "-m", "powercast", "config", "init", "--role", role],
            capture_output=True,
            check=True,
            text=True,
        ).stdout
        path = tmp_path / f"{role}.toml"
        path.write_text(out)
        assert main(["config", "check", str(path)]) == 0, capsys.readouterr().err
        assert capsys.readouterr().out.startswith(f"{path}: ok ({role}")
        config = cfg.load(path)
        for key, argv in cfg._argvs(msgspec.to_builtins(config)):
            assert shutil.which(argv[0]), f"{key}: {argv[0]} is not on PATH"
        assert "# CHANGE:" in out
        examples = re.sub(r"^# (?=\[\[?[\w.]+\]\]?$|\w+ = )", "", out, flags=re.MULTILINE)
        assert examples != out or role == "relay"
        uncommented = cfg.parse(examples, "examples")
        if isinstance(uncommented, cfg.ControllerConfig):
            kinds = [type(a).__name__ for a in uncommented.actuators]
            assert kinds == [
                "CommandActuator",
                "HwmonActuator",
                "CommandActuator",
                "ModbusActuator",
            ]
            assert [a.on for a in uncommented.actions] == ["shedding"]
        if isinstance(uncommented, cfg.PublisherConfig):
            kinds = [type(s).__name__ for s in uncommented.sources]
            assert kinds == ["SimulatedSource", "NutSource", "SnmpSource", "HwmonSource"]

    def test_init_configs_run_as_printed(self, tmp_path: Path) -> None:
        """A publisher and a controller started from `config init` (logs as JSON, to read
        them) run: the controller hears the publisher's simulated "online" and its
        stand-in actuator (a program that exists) confirms fans on."""
        keys = make_keys(tmp_path / "keys")
        (tmp_path / "run").mkdir()
        env = {"CREDENTIALS_DIRECTORY": str(keys), "RUNTIME_DIRECTORY": str(tmp_path / "run")}
        paths = {}
        for role in ("publisher", "controller"):
            text = main_output(["config", "init", "--role", role])
            paths[role] = tmp_path / f"{role}.toml"
            paths[role].write_text(text.replace('format = "auto"', 'format = "json"'))
        with (
            running("control", "--config", str(paths["controller"]), env=env) as ctl,
            running("publish", "--config", str(paths["publisher"]), env=env),
        ):
            ctl.wait_for("transition", timeout=10, state="normal")
            ctl.wait_for("actuator_set", timeout=10, position="on")
        assert not [e for e in ctl.seen if e.get("event") == "no_actuators"]


def main_output(argv: list[str]) -> str:
    """What `powercast ARGV` prints, run as its own process."""
    done = subprocess.run(
        [sys.executable, "-m", "powercast", *argv], capture_output=True, check=True, text=True
    )
    return done.stdout


@pytest.mark.system
class TestHostProblems:
    def controller(self, text: str = "") -> cfg.Config:
        return cfg.parse('role = "controller"\n' + text, "f.toml")

    def test_loopback_and_programs_found_are_fine(self) -> None:
        """127.0.0.1 and lo, a program by absolute path or on PATH: nothing to say."""
        text = (
            '[network]\ninterface = "lo"\nunicast_listen = "127.0.0.1:5001"\n'
            '[metrics]\nlisten = "127.0.0.1:9301"\n'
            f'[[actions]]\non = "normal"\nargv = ["{sys.executable}", "-c", "1"]\n'
            '[[actuators]]\nkind = "command"\non_argv = ["true"]\noff_argv = ["true"]\n'
        )
        assert cfg.host_problems(self.controller(text)) == []

    def test_a_program_only_on_this_shells_path(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A bare name found on the checking shell's PATH but not on a service's would not
        be found by the daemon under systemd: config check says where it is and what to
        write instead."""
        program = tmp_path / "fans-on-here"
        program.write_text("#!/bin/sh\n")
        program.chmod(0o755)
        monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
        text = '[[actuators]]\nkind = "command"\non_argv = ["fans-on-here"]\noff_argv = ["true"]\n'
        (line,) = cfg.host_problems(self.controller(text))
        assert line.startswith("actuators[0].on_argv[0]: expected a program that exists")
        assert line.endswith(
            f'got "fans-on-here": found at {program} on this shell\'s PATH, not on a'
            f" service's ({DEFAULT_PATH}): give its absolute path"
        )

    @pytest.mark.parametrize(
        ("interface", "why"),
        [
            ("nosuch0", "no interface with this name on this host"),
            ("192.0.2.1", "no interface on this host has this address"),
        ],
    )
    def test_interface_not_on_this_host(self, interface: str, why: str) -> None:
        """network.interface by name or address must be on this host."""
        (line,) = cfg.host_problems(self.controller(f'[network]\ninterface = "{interface}"'))
        assert line.startswith(f"network.interface: {why} (expected ")
        assert line.endswith(f"got {interface!r})")

    @pytest.mark.parametrize(
        ("text", "key"),
        [
            ('[network]\nunicast_listen = "192.0.2.1:5001"', "network.unicast_listen"),
            ('[metrics]\nlisten = "192.0.2.1:9301"', "metrics.listen"),
        ],
    )
    def test_listen_address_not_on_this_host(self, text: str, key: str) -> None:
        """An address to listen on must be one of this host's (or a wildcard)."""
        assert cfg.host_problems(self.controller(text)) == [
            f"{key}: no interface on this host has this address (expected one of this host's"
            " addresses, or 0.0.0.0 or :: for all of them, got '192.0.2.1')"
        ]

    def test_missing_or_unrunnable_programs(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """argv[0] must exist and be executable: each one that is not is named by its key."""
        plain = tmp_path / "plain"
        plain.write_text("")
        monkeypatch.setenv("PATH", str(tmp_path))
        text = (
            f'[[actions]]\non = "normal"\nargv = ["{tmp_path}/nope"]\n'
            f'[[actions]]\non = "normal"\nargv = ["{plain}"]\n'
            f'[[actions]]\non = "normal"\nargv = ["{tmp_path}"]\n'
            '[[actuators]]\nkind = "command"\non_argv = ["fans-on"]\n'
            f'off_argv = ["{sys.executable}"]\n'
        )
        expected = (
            "expected a program that exists and is executable (an absolute path, or a name on PATH)"
        )
        assert cfg.host_problems(self.controller(text)) == [
            f'actions[0].argv[0]: {expected}, got "{tmp_path}/nope": no such file',
            f'actions[1].argv[0]: {expected}, got "{plain}": not executable',
            f'actions[2].argv[0]: {expected}, got "{tmp_path}": a directory',
            f'actuators[0].on_argv[0]: {expected}, got "fans-on": not found on PATH',
        ]

    def test_zones_and_sources_are_checked_too(self) -> None:
        """Programs inside zones, and a publisher's command sources, are found by key."""
        zoned = self.controller(
            '[[zones]]\nname = "a"\n[[zones.actions]]\non = "normal"\nargv = ["/nope"]'
        )
        assert cfg.host_problems(zoned)[0].startswith("zones[0].actions[0].argv[0]: expected")
        source = cfg.parse(
            'role = "publisher"\n[[sources]]\nkind = "command"\nargv = ["/nope"]', "f"
        )
        assert cfg.host_problems(source)[0].startswith("sources[0].argv[0]: expected")


@pytest.mark.system
class TestCheckCommand:
    def check(self, tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
        path = tmp_path / "c.toml"
        path.write_text(f'role = "controller"\n[auth]\nkeys_dir = "{tmp_path / "keys"}"\n{text}')
        make_keys(tmp_path / "keys")
        return subprocess.run(
            [sys.executable, "-m", "powercast", "config", "check", str(path)],
            capture_output=True,
            text=True,
            check=False,
        )

    def test_missing_interface_exits_78_with_one_line(self, tmp_path: Path) -> None:
        """`powercast config check` of a config naming an interface this host lacks: 78."""
        done = self.check(tmp_path, '[network]\ninterface = "nosuch0"\n')
        assert done.returncode == 78
        assert done.stdout == ""
        assert done.stderr.startswith(
            f"powercast: {tmp_path / 'c.toml'}: network.interface: no interface with this name"
        )
        assert done.stderr.count("\n") == 1

    def test_nul_in_argv_exits_78_with_one_line(self, tmp_path: Path) -> None:
        """`powercast config check` of an argv holding a NUL: 78, naming the argument."""
        done = self.check(tmp_path, '[[actions]]\non = "normal"\nargv = ["/bin/echo", "\\u0000"]\n')
        assert done.returncode == 78
        assert done.stderr == (
            f"powercast: {tmp_path / 'c.toml'}: actions[0].argv[1]: expected text without NUL"
            ' characters (no program, path or protocol can carry one), got "\\u0000"\n'
        )

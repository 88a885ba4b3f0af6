"""Command line: ``powercast publish|control|config|demo``.

``main(argv) -> int`` is the only place that prints errors or exits. Mistakes an operator
can fix (a bad config, an interface that does not exist) are one line on stderr and a
non-zero status; a traceback is shown only with POWERCAST_DEBUG=1, for real bugs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Final

from powercast import __version__, failsafe, logs, tools
from powercast import config as cfg
from powercast.auth import Keyring, KeyringError, keygen, keys_dir, load_keys
from powercast.demo import run_demo
from powercast.net import NetworkConfigError, NetworkError
from powercast.runtime import serve
from powercast.tap import Tap, run_tap

EX_CONFIG: Final = 78
"""sysexits' "configuration error": the units do not restart on it."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="powercast",
        description="Power and temperature announcements over IP multicast, and the"
        " controllers that shed or restore ventilation fans from them.",
    )
    parser.add_argument("--version", action="version", version=f"powercast {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for name, role, text in (
        ("publish", "publisher", "announce power and temperatures (the publisher daemon)"),
        ("control", "controller", "listen and drive the fans (the controller daemon)"),
        ("relay", "relay", "carry the group to a broker topic and back (the relay daemon)"),
    ):
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument(
            "--config",
            type=Path,
            default=cfg.DEFAULT_PATHS[role],
            help=f"TOML file (default: {cfg.DEFAULT_PATHS[role]})",
        )
        p.set_defaults(role=role, run=_daemon_command)
        if role == "controller":
            p.add_argument(
                "--dry-run",
                action="store_true",
                help="decide and log everything, but run no action and move no actuator",
            )

    conf = sub.add_parser("config", help="check or create configuration files")
    conf.set_defaults(run=_config)
    conf_sub = conf.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    check = conf_sub.add_parser("check", help="validate a config file; the role is read from it")
    check.add_argument(
        "files", nargs="*", type=Path, metavar="FILE", help="default: both files in /etc/powercast"
    )
    init = conf_sub.add_parser("init", help="print a default config on stdout")
    init.add_argument("--role", required=True, choices=["publisher", "controller", "relay"])

    safe = sub.add_parser(
        "failsafe",
        help="drive every actuator of a controller config to its safe position (fans on)",
    )
    safe.add_argument("--config", type=Path, default=cfg.DEFAULT_PATHS["controller"])
    safe.add_argument(
        "--after-stop",
        "--after-failure",
        dest="after_stop",
        action="store_true",
        help="after the controller stopped (ExecStopPost=): honour the leave-fans marker",
    )

    safe.set_defaults(run=_failsafe_command)
    keygen_p = sub.add_parser(
        "keygen", help="write a new random key file (mode 0600; never overwrites)"
    )
    keygen_p.add_argument("key_id", type=int, metavar="ID", help="key id, 1..65535")
    keygen_p.add_argument("file", type=Path, metavar="FILE", help="e.g. /etc/powercast/keys/1.key")

    keygen_p.set_defaults(run=_keygen)
    tap = sub.add_parser(
        "tap", help="print each datagram on the group, decoded, with its verification result"
    )
    tap.add_argument("--config", type=Path, help="take group, port, interface and keys from it")
    tap.add_argument("--group", help="multicast group (default: from --config, or 239.1.1.1)")
    tap.add_argument("--port", type=int, help="UDP port (default: from --config, or 5001)")
    tap.add_argument("--interface", help="interface name or address (default: 127.0.0.1)")
    tap.add_argument("--keys-dir", help="directory of key files (default: as the daemons)")
    tap.add_argument("--json", action="store_true", help="one JSON object per line")
    tap.add_argument("--count", type=int, help="stop after N datagrams")
    tap.add_argument("--timeout", type=float, help="stop after S seconds")
    tap.set_defaults(run=_tap)

    tools.add_parsers(sub)  # status, override, send, ping: run by tools.run

    demo = sub.add_parser(
        "demo", help="play a power outage between a real publisher and controller on loopback"
    )
    demo.set_defaults(run=lambda _: run_demo())

    diagram = sub.add_parser(
        "diagram", help="print the fan policy's state chart as Mermaid text, or draw it"
    )
    diagram.add_argument(
        "--output", type=Path, metavar="FILE", help="write a .png or .svg image (needs Graphviz)"
    )
    diagram.set_defaults(run=lambda args: _diagram(args.output))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run: Callable[[argparse.Namespace], int] = getattr(args, "run", tools.run)
    try:
        return run(args)
    except (cfg.ConfigError, KeyringError, NetworkError) as err:
        print(f"powercast: {err}", file=sys.stderr)
        return EX_CONFIG if not isinstance(err, NetworkError) else 1
    except KeyboardInterrupt:
        return 130
    except Exception:  # a bug, not a user's mistake: say so plainly
        if os.environ.get("POWERCAST_DEBUG") == "1":
            raise
        exc = sys.exc_info()[1]
        print(
            f"powercast: internal error: {exc!r} (run with POWERCAST_DEBUG=1 for a traceback)",
            file=sys.stderr,
        )
        traceback.print_exc(limit=0)
        return 70


def _daemon_command(args: argparse.Namespace) -> int:
    return _run_daemon(args.config, args.role, dry_run=getattr(args, "dry_run", False))


def _failsafe_command(args: argparse.Namespace) -> int:
    marker = failsafe.leave_fans_marker()
    if args.after_stop and marker is not None and marker.exists():
        print(f"powercast failsafe: fans left as they are ({marker} exists)")
        return 0
    return _failsafe(args.config)


def _keygen(args: argparse.Namespace) -> int:
    keygen(args.key_id, args.file)
    print(f"{args.file}: new key {args.key_id} (mode 0600)")
    return 0


def _run_daemon(path: Path, role: cfg.Role, *, dry_run: bool = False) -> int:
    """Run a daemon; 78 (EX_CONFIG, not restarted by the units) for a config it refuses or
    a network setting this host cannot have (NetworkConfigError), 1 for a network failure
    that may pass. A program in an action or actuator that is missing is not refused
    here: a controller must still start, run its other actuators and fail safe; `config
    check` reports it."""
    logs.configure()
    try:
        config = cfg.load(path, role)
        keyring = load_keys(config)
    except (cfg.ConfigError, KeyringError) as err:
        print(f"powercast: {err}", file=sys.stderr)
        return EX_CONFIG
    logs.configure(level=config.log.level, fmt=config.log.format)
    try:
        asyncio.run(serve(path, config, keyring, dry_run=dry_run))
    except NetworkError as err:
        print(f"powercast: {path}: {err}", file=sys.stderr)
        return EX_CONFIG if isinstance(err, NetworkConfigError) else 1
    return 0


def _config(args: argparse.Namespace) -> int:
    """`config init`, or `config check`: each file must load, its keys must be there, and
    this host must have what it names (interfaces, addresses, programs); else 78."""
    if args.config_command == "init":
        sys.stdout.write(cfg.dumps(cfg.defaults(args.role)))
        return 0
    files = args.files or [p for p in cfg.DEFAULT_PATHS.values() if p.exists()]
    if not files:
        print("powercast: no config file given and none in /etc/powercast", file=sys.stderr)
        return EX_CONFIG
    status = 0
    for path in files:
        try:
            config = cfg.load(path)
            keyring = load_keys(config)
        except (cfg.ConfigError, KeyringError) as err:
            print(f"powercast: {err}", file=sys.stderr)
            status = EX_CONFIG
            continue
        problems = cfg.host_problems(config)
        for problem in problems:
            print(f"powercast: {path}: {problem}", file=sys.stderr)
        if problems:
            status = EX_CONFIG
            continue
        if isinstance(config, cfg.RelayConfig):
            print(f"{path}: ok (relay; carries datagrams as they are, needs no keys)")
        else:
            keys = ", ".join(map(str, keyring.ids)) or "none"
            print(f"{path}: ok ({config.role}; keys in {keyring.directory}: {keys})")
    return status


def _diagram(output: Path | None) -> int:
    from powercast import diagram  # noqa: PLC0415  # only this command draws

    if output is None:
        sys.stdout.write(diagram.mermaid())
        return 0
    try:
        diagram.write_image(output)
    except diagram.DiagramError as err:
        print(f"powercast: diagram: {err}", file=sys.stderr)
        return 1
    print(f"{output}: the fan policy's state chart")
    return 0


def _tap(args: argparse.Namespace) -> int:
    network = cfg.Network()
    configured_keys = ""
    skew = 10.0
    if args.config:
        config = cfg.load(args.config)
        network = config.network
        configured_keys = "" if isinstance(config, cfg.RelayConfig) else config.auth.keys_dir
        if isinstance(config, cfg.ControllerConfig):
            skew = config.auth.max_clock_skew_s
    directory = keys_dir(args.keys_dir if args.keys_dir is not None else configured_keys)
    tap = Tap(Keyring.load(directory), max_clock_skew_s=skew)
    return run_tap(
        args.group or network.group,
        args.port or network.port,
        args.interface or network.interface,
        tap,
        sys.stdout,
        as_json=args.json,
        count=args.count,
        timeout=args.timeout,
    )


def _failsafe(path: Path) -> int:
    configs, notes = failsafe.gather_configs(path)
    for note in notes:
        print(f"powercast: {note}", file=sys.stderr)
    if not configs:
        print("powercast failsafe: no config could be read; nothing moved", file=sys.stderr)
        return 1
    report = asyncio.run(failsafe.to_safe_state(configs))
    for line in [*report.failures, *report.notes]:
        print(f"powercast: {line}", file=sys.stderr)
    print(f"powercast failsafe: {report.moved} of {report.total} actuators set to fans on")
    return 1 if report.failures else 0

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
from pathlib import Path
from typing import Final

from powercast import __version__, logs
from powercast import config as cfg
from powercast.demo import run_demo
from powercast.net import NetworkError
from powercast.runtime import serve

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
    ):
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument(
            "--config",
            type=Path,
            default=cfg.DEFAULT_PATHS[role],
            help=f"TOML file (default: {cfg.DEFAULT_PATHS[role]})",
        )
        p.set_defaults(role=role)

    conf = sub.add_parser("config", help="check or create configuration files")
    conf_sub = conf.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    check = conf_sub.add_parser("check", help="validate a config file; the role is read from it")
    check.add_argument(
        "files", nargs="*", type=Path, metavar="FILE", help="default: both files in /etc/powercast"
    )
    init = conf_sub.add_parser("init", help="print a default config on stdout")
    init.add_argument("--role", required=True, choices=["publisher", "controller"])

    demo = sub.add_parser(
        "demo", help="play a power outage between a real publisher and controller on loopback"
    )
    demo.add_argument("--speed", type=float, default=1.0, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command in ("publish", "control"):
            return _run_daemon(args.config, args.role)
        if args.command == "config":
            return _config(args)
        if args.command == "demo":
            return run_demo()
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
    return 2


def _run_daemon(path: Path, role: cfg.Role) -> int:
    logs.configure()
    try:
        config = cfg.load(path, role)
    except cfg.ConfigError as err:
        print(f"powercast: {err}", file=sys.stderr)
        return EX_CONFIG
    logs.configure(level=config.log.level, fmt=config.log.format)
    try:
        asyncio.run(serve(path, config))
    except NetworkError as err:
        print(f"powercast: {path}: {err}", file=sys.stderr)
        return 1
    return 0


def _config(args: argparse.Namespace) -> int:
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
        except cfg.ConfigError as err:
            print(f"powercast: {err}", file=sys.stderr)
            status = EX_CONFIG
        else:
            print(f"{path}: ok ({config.role})")
    return status

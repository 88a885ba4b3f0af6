"""The daemons, as their systemd units start them: ``powercast publish|control|relay``,
and ``powercast failsafe``, which sets the fans on when no controller runs."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from powercast import config as cfg
from powercast import logs
from powercast.cli.arguments import Commands, command
from powercast.net import NetworkError
from powercast.runtime import serve
from powercast.secrets import load_keys


def add_commands(commands: Commands) -> None:
    for name, role, text in (
        ("publish", "publisher", "announce power and temperatures (the publisher daemon)"),
        ("control", "controller", "listen and drive the fans (the controller daemon)"),
        ("relay", "relay", "carry the group to a broker topic and back (the relay daemon)"),
    ):
        p = command(commands, name, _serve, text, description=text)
        p.add_argument(
            "--config",
            type=Path,
            default=cfg.DEFAULT_PATHS[role],
            help=f"TOML file (default: {cfg.DEFAULT_PATHS[role]})",
        )
        p.set_defaults(role=role)
        if role == "controller":
            p.add_argument(
                "--dry-run",
                action="store_true",
                help="decide and log everything, but run no action and move no actuator",
            )

    safe = command(
        commands,
        "failsafe",
        _failsafe,
        "drive every actuator of a controller config to its safe position (fans on)",
    )
    safe.add_argument("--config", type=Path, default=cfg.DEFAULT_PATHS["controller"])
    safe.add_argument(
        "--after-stop",
        "--after-failure",
        dest="after_stop",
        action="store_true",
        help="after the controller stopped (ExecStopPost=): honour the leave-fans marker",
    )


def _serve(args: argparse.Namespace) -> int:
    """Run a daemon until it is stopped. A config it refuses, or a network setting this
    host cannot have, exits 78 (EX_CONFIG: not restarted by the units); a network failure
    that may pass exits 1. A program in an action or actuator that is missing is not
    refused here: a controller must still start, run its other actuators and fail safe;
    `config check` reports it."""
    path: Path = args.config
    logs.configure()
    config = cfg.load(path, args.role)
    keyring = load_keys(config)
    logs.configure(level=config.log.level, fmt=config.log.format)
    try:
        dry_run = getattr(args, "dry_run", False)
        asyncio.run(serve(path, config, keyring, dry_run=dry_run, own_process=True))
    except NetworkError as err:  # it names the setting; the file is ours to name
        raise type(err)(f"{path}: {err}") from None
    finally:
        logs.drain(logs.EXIT_DRAIN_S)  # its last lines, before an error is printed after them
    return 0


def _failsafe(args: argparse.Namespace) -> int:
    """Every actuator to fans on, and a report: what moved, what could not be moved (exit 1)."""
    try:
        return _failsafe_run(args.config, after_stop=args.after_stop)
    finally:
        logs.drain(logs.EXIT_DRAIN_S)


def _failsafe_run(path: Path, *, after_stop: bool) -> int:
    """``powercast failsafe`` itself. Its words go through :func:`logs.say`, never waited
    on: the unit's stop, and its restart, wait for this command to end."""
    from powercast import failsafe  # noqa: PLC0415  # the daemons start without it

    marker = failsafe.leave_fans_marker()
    if after_stop and marker is not None and marker.exists():
        logs.say(f"powercast failsafe: fans left as they are ({marker} exists)", sys.stdout)
        return 0
    configs, notes = asyncio.run(failsafe.gather_configs(path))
    if not configs:
        for note in notes:
            logs.say(f"powercast: {note}", sys.stderr)
        logs.say("powercast failsafe: no config could be read; nothing moved", sys.stderr)
        return 1
    # The fans first, then the report: a journal that does not read would hold a line
    # written before them, and the fans with it.
    report = asyncio.run(failsafe.to_safe_state(configs))
    for line in [*notes, *report.failures, *report.notes]:
        logs.say(f"powercast: {line}", sys.stderr)
    summary = f"powercast failsafe: {report.moved} of {report.total} actuators set to fans on"
    logs.say(summary, sys.stdout)
    return 1 if report.failures else 0

"""The operator commands' command line: ``powercast status|override|send|ping``.

cli.py adds these subcommands with :func:`add_parsers` and hands them to :func:`run`.
Errors an operator can act on are one line (ControlError names the socket and what to
do); a config, key or network error is raised to cli.main, which prints it the same way.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import re
import sys
import time
from pathlib import Path
from typing import Any, Final

from powercast import config as cfg
from powercast import control, drill, ping, wire
from powercast import status as report
from powercast.auth import Keyring, keys_dir

COMMANDS: Final = ("status", "override", "send", "ping")
_DURATION: Final = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(text: str) -> float:
    """``90``, ``90s``, ``30m``, ``1h30m``, ``1d`` -> seconds."""
    text = text.strip()
    parts = _DURATION.findall(text)
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        return float(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise argparse.ArgumentTypeError(
            f"expected a duration such as 90s, 30m or 1h30m, got {text!r}"
        )
    return sum(float(n) * _UNITS[u] for n, u in parts)


def _temperature(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    try:
        if not sep:
            raise ValueError(text)
        return name, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected NAME=CELSIUS such as inlet=24.5, got {text!r}"
        ) from None


def add_parsers(sub: Any) -> None:
    """The four subcommands, on cli.py's subparsers."""
    status = sub.add_parser(
        "status", help="what the running daemon believes and why (over its control socket)"
    )
    _where(status)
    status.add_argument(
        "--json", action="store_true", help="the status as one JSON object (version 1)"
    )

    override = sub.add_parser(
        "override", help="force a zone's fans on or off for a while, or clear that (controller)"
    )
    _where(override, roles=False)
    override.add_argument("--zone", help="the zone (needed when the controller has several)")
    override.add_argument("--fans", choices=["on", "off"], help="the fans' position to hold")
    override.add_argument(
        "--for",
        dest="for_s",
        type=duration,
        metavar="DURATION",
        help="how long: 90s, 30m, 2h (at most 24h)",
    )
    override.add_argument("--reason", help="why, for the log (required to set one)")
    override.add_argument("--clear", action="store_true", help="end the zone's override now")

    send = sub.add_parser(
        "send", help="send one signed announcement built from flags, for drills (needs --drill)"
    )
    _network_flags(send)
    send.add_argument(
        "--id", default=drill.default_id(), help="publisher id (default: drill-<host>)"
    )
    send.add_argument(
        "--power", required=True, choices=["online", "on_battery", "low_battery", "unknown"]
    )
    send.add_argument("--charge", type=float, help="battery charge, %%")
    send.add_argument("--runtime", type=float, help="battery runtime left, s")
    send.add_argument("--load", type=float, help="load, %%")
    send.add_argument("--input-v", type=float, help="input voltage, V")
    send.add_argument(
        "--temp",
        type=_temperature,
        action="append",
        default=[],
        metavar="NAME=C",
        help="a temperature; repeat for more",
    )
    send.add_argument(
        "--tal", type=float, default=3.0, help="seconds the data stays fresh (default 3)"
    )
    send.add_argument("--repeat", type=int, default=3, help="datagrams in the burst (default 3)")
    send.add_argument(
        "--hold",
        type=duration,
        default=0.0,
        metavar="DURATION",
        help="keep announcing every TAL/3 for this long (default: one burst)",
    )
    send.add_argument(
        "--drill", action="store_true", help="really send (without: print what would be sent)"
    )

    ping_p = sub.add_parser(
        "ping", help="multicast reachability, loss and RTT between nodes (run it on each)"
    )
    _network_flags(ping_p)
    ping_p.add_argument("--id", default=_host_id(), help="this node's name (default: host name)")
    ping_p.add_argument("--count", type=int, default=10, help="pings to send (default 10)")
    ping_p.add_argument(
        "--interval", type=float, default=1.0, help="seconds between pings (default 1)"
    )
    ping_p.add_argument(
        "--timeout",
        type=float,
        default=3.0,
        help="seconds to keep answering after the last ping (default 3)",
    )
    ping_p.add_argument(
        "--peer",
        action="append",
        default=[],
        metavar="ID",
        help="a node expected to answer; repeat for more",
    )
    ping_p.add_argument("--json", action="store_true", help="the report as one JSON object")


def _where(p: argparse.ArgumentParser, *, roles: bool = True) -> None:
    p.add_argument("--socket", type=Path, help="the daemon's control socket")
    if roles:
        p.add_argument(
            "--role",
            choices=sorted(cfg.DEFAULT_PATHS),
            help="which daemon on this host (default: the controller, else the publisher)",
        )
    p.add_argument("--config", type=Path, help="take control.socket from this config file")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the daemon")


def _network_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="take group, port, interface, ttl and keys from it")
    p.add_argument("--group", help="multicast group (default: from --config, or 239.1.1.1)")
    p.add_argument("--port", type=int, help="UDP port (default: from --config, or 5001)")
    p.add_argument(
        "--interface", help="interface name or address (default: from --config, or 127.0.0.1)"
    )
    p.add_argument("--ttl", type=int, help="multicast TTL (default: from --config, or 1)")
    p.add_argument("--keys-dir", help="directory of key files (default: as the daemons)")
    p.add_argument(
        "--key-id",
        type=int,
        help="key to sign with; 0: unsigned (default: the config's, else the lowest found)",
    )


def _user_name() -> str:
    """Our user, for a daemon that cannot see our uid (it logs it marked as our claim)."""
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return f"uid {os.getuid()}"


def _host_id() -> str:
    return cfg.host_id() or "node"


def run(args: argparse.Namespace) -> int:
    """Run one of :data:`COMMANDS`; the exit status."""
    try:
        if args.command == "status":
            return _status(args)
        if args.command == "override":
            return _override(args)
        if args.command == "send":
            return _send(args)
        return _ping(args)
    except control.ControlError as err:
        print(f"powercast: {err}", file=sys.stderr)
        return 1
    except wire.EncodeError as err:
        print(f"powercast: {args.command}: {err}", file=sys.stderr)
        return 2


# --- status and override ------------------------------------------------------------------


def _socket(args: argparse.Namespace, role: str | None) -> Path:
    if args.socket is not None:
        return Path(args.socket)
    if args.config is not None:
        config = cfg.load(args.config)
        return control.socket_path(config.control.socket, config.role)
    if role is not None:
        return control.default_socket(role)
    controller = control.default_socket("controller")
    publisher = control.default_socket("publisher")
    return publisher if not _exists(controller) and _exists(publisher) else controller


def _exists(path: Path) -> bool:
    """False only when it is surely not there: a path we may not look at is left for
    control.call to explain."""
    try:
        path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:
        return True
    return True


def _status(args: argparse.Namespace) -> int:
    path = _socket(args, args.role)
    answer = control.call(path, {"request": "status"}, timeout=args.timeout)
    status = answer["status"]
    if args.json:
        print(json.dumps(status, indent=2, ensure_ascii=False))
    else:
        print(report.render(status))
    return 0


def _override(args: argparse.Namespace) -> int:
    request: dict[str, Any] = {"request": "override"}
    if args.zone is not None:
        request["zone"] = args.zone
    if args.clear:
        if args.fans is not None or args.for_s is not None:
            print("powercast: override: --clear takes no --fans or --for", file=sys.stderr)
            return 2
        request.update(clear=True, reason=args.reason or "cleared by operator")
    else:
        missing = [
            f
            for f, v in (("--fans", args.fans), ("--for", args.for_s), ("--reason", args.reason))
            if v is None
        ]
        if missing:
            print(
                f"powercast: override: {', '.join(missing)} needed (or --clear),"
                ' e.g. --fans on --for 30m --reason "filter change"',
                file=sys.stderr,
            )
            return 2
        request.update(fans=args.fans, for_s=args.for_s, reason=args.reason)
    request["user"] = _user_name()
    if sudo_user := os.environ.get("SUDO_USER"):
        request["sudo_user"] = sudo_user
    answer = control.call(_socket(args, "controller"), request, timeout=args.timeout)
    zone = answer["zone"]
    print(f"zone {zone['zone']}: {zone['state']} (fans {zone['fans']}): {zone['reason']}")
    o = zone["override"]
    if o is not None:
        until = time.strftime("%H:%M:%S", time.localtime(o["until"]))
        print(f"override: fans {o['fans']} until {until} by {o['who']}: {o['why']}")
        if o["fans"] != zone["fans"]:
            print("(the policy holds the fans " + zone["fans"] + " for now: see the reason above)")
    elif args.clear:
        print("override cleared")
    return 0


# --- send and ping ------------------------------------------------------------------------


def _network_and_keys(
    args: argparse.Namespace,
) -> tuple[cfg.Config | None, str, int, str, int, Keyring, int]:
    """(config, group, port, interface, ttl, keyring, key id) from flags over --config."""
    config = cfg.load(args.config) if args.config is not None else None
    network: cfg.Network = config.network if config is not None else cfg.Network()
    ttl = args.ttl
    if ttl is None:
        ttl = config.network.ttl if isinstance(config, cfg.PublisherConfig) else 1
    configured = ""
    if isinstance(config, cfg.PublisherConfig | cfg.ControllerConfig):
        configured = config.auth.keys_dir
    keyring = Keyring.load(keys_dir(args.keys_dir if args.keys_dir is not None else configured))
    key_id = args.key_id
    if key_id is None:
        if isinstance(config, cfg.PublisherConfig):
            key_id = config.auth.key_id
        else:
            key_id = keyring.ids[0] if keyring.ids else 0
    if key_id:
        keyring.signer(key_id)  # KeyringError now, naming the directory, if it is missing
    return (
        config,
        args.group or network.group,
        args.port or network.port,
        args.interface or network.interface,
        ttl,
        keyring,
        key_id,
    )


def _send(args: argparse.Namespace) -> int:
    config, group, port, interface, ttl, keyring, key_id = _network_and_keys(args)
    if isinstance(config, cfg.PublisherConfig) and args.id == config.id:
        print(
            f"powercast: send: --id {args.id!r} is the id of the publisher in {args.config}:"
            " controllers would take the drill for that publisher restarting and drop its"
            " own announcements as replays until it restarts; use another id",
            file=sys.stderr,
        )
        return 2
    if not 1 <= args.repeat <= 10:
        print(f"powercast: send: --repeat: expected 1..10, got {args.repeat}", file=sys.stderr)
        return 2
    temperatures = dict(args.temp)
    plan = drill.Drill(
        group=group,
        port=port,
        interface=interface,
        publisher=args.id,
        power=wire.Power(
            wire.PowerStatus(args.power), args.charge, args.runtime, args.load, args.input_v
        ),
        temperatures=temperatures,
        ttl=ttl,
        tal_s=args.tal,
        key_id=key_id,
        sign=keyring.signer(key_id) if key_id else None,
        repeat=args.repeat,
        hold_s=args.hold,
    )
    drill.check(plan)
    if not args.drill:
        print(f"would send: {plan.describe()}")
        print(
            "not sent: add --drill to send it. Controllers on this group act on it as on a"
            " real UPS (those with policy.publishers must list this id)."
        )
        return 2
    drill.send(plan, sys.stdout)
    return 0


def _ping(args: argparse.Namespace) -> int:
    _, group, port, interface, ttl, keyring, key_id = _network_and_keys(args)
    if args.count < 1 or args.interval <= 0 or args.timeout < 0:
        print("powercast: ping: --count must be at least 1, --interval above 0", file=sys.stderr)
        return 2
    pinger = ping.Pinger(node=args.id, keyring=keyring, key_id=key_id, count=args.count)
    if (
        ping.decode(ping.encode(ping.Probe("ping", args.id, 1, 1), keyring, key_id), keyring)
        is None
    ):
        print(
            "powercast: ping: --id: expected letters, digits and ._:@- (at most 64),"
            f" got {args.id!r}",
            file=sys.stderr,
        )
        return 2
    result = ping.run(
        pinger,
        group=group,
        port=port,
        interface=interface,
        interval=args.interval,
        timeout=args.timeout,
        ttl=ttl,
        expect=tuple(args.peer),
    )
    print(json.dumps(result, indent=2) if args.json else ping.render(result))
    return 0 if result["ok"] else 1

"""Running a site: ``powercast status``, ``override`` and ``send``.

``status`` and ``override`` talk to a running daemon over its control socket (a
ControlError names the socket and what to do); ``send`` announces a drill on the group.
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
from powercast import control, wire
from powercast import status as report
from powercast.cli.arguments import Commands, Group, command, group_flags
from powercast.errors import UsageError

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


def add_commands(commands: Commands) -> None:
    status = command(
        commands,
        "status",
        _status,
        "what the running daemon believes and why (over its control socket)",
    )
    _socket_flags(status)
    status.add_argument(
        "--json", action="store_true", help="the status as one JSON object (version 1)"
    )

    override = command(
        commands,
        "override",
        _override,
        "force a zone's fans on or off for a while, or clear that (controller)",
    )
    _socket_flags(override, roles=False)
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

    send = command(
        commands,
        "send",
        _send,
        "send one signed announcement built from flags, for drills (needs --drill)",
    )
    group_flags(send, sending=True)
    send.add_argument("--id", help="publisher id (default: drill-<host>)")
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


def _socket_flags(p: argparse.ArgumentParser, *, roles: bool = True) -> None:
    p.add_argument("--socket", type=Path, help="the daemon's control socket")
    if roles:
        p.add_argument(
            "--role",
            choices=sorted(cfg.DEFAULT_PATHS),
            help="which daemon on this host (default: the controller, else the publisher)",
        )
    p.add_argument("--config", type=Path, help="take control.socket from this config file")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the daemon")


def _user_name() -> str:
    """Our user, for a daemon that cannot see our uid (it logs it marked as our claim)."""
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return f"uid {os.getuid()}"


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
            raise UsageError("override: --clear takes no --fans or --for")
        request.update(clear=True, reason=args.reason or "cleared by operator")
    else:
        missing = [
            f
            for f, v in (("--fans", args.fans), ("--for", args.for_s), ("--reason", args.reason))
            if v is None
        ]
        if missing:
            raise UsageError(
                f"override: {', '.join(missing)} needed (or --clear),"
                ' e.g. --fans on --for 30m --reason "filter change"'
            )
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


# --- send ---------------------------------------------------------------------------------


def _send(args: argparse.Namespace) -> int:
    from powercast import drill  # noqa: PLC0415  # the daemons start without it

    if args.id is None:
        args.id = drill.default_id()
    where = Group.from_args(args)
    ttl = where.ttl(args.ttl)
    key_id = where.key_id(args.key_id)
    config = where.config
    if isinstance(config, cfg.PublisherConfig) and args.id == config.id:
        raise UsageError(
            f"send: --id {args.id!r} is the id of the publisher in {args.config}:"
            " controllers would take the drill for that publisher restarting and drop its"
            " own announcements as replays until it restarts; use another id"
        )
    if not 1 <= args.repeat <= 10:
        raise UsageError(f"send: --repeat: expected 1..10, got {args.repeat}")
    temperatures = dict(args.temp)
    plan = drill.Drill(
        group=where.address,
        port=where.port,
        interface=where.interface,
        publisher=args.id,
        power=wire.Power(
            wire.PowerStatus(args.power), args.charge, args.runtime, args.load, args.input_v
        ),
        temperatures=temperatures,
        ttl=ttl,
        tal_s=args.tal,
        key_id=key_id,
        sign=where.keyring.signer(key_id) if key_id else None,
        repeat=args.repeat,
        hold_s=args.hold,
    )
    try:
        drill.check(plan)
    except wire.EncodeError as err:  # a value no receiver would take: a flag to change
        raise UsageError(f"send: {err}") from None
    if not args.drill:
        print(f"would send: {plan.describe()}")
        print(
            "not sent: add --drill to send it. Controllers on this group act on it as on a"
            " real UPS (those with policy.publishers must list this id)."
        )
        return 2
    drill.send(plan, sys.stdout)
    return 0

"""The asyncio runtime around the pure cores: sockets, clocks, signals, processes.

One module per daemon (controller, publisher, relay), all over one lifecycle
(:mod:`.lifecycle`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from powercast import config as cfg
from powercast import net
from powercast.auth import Keyring
from powercast.config import ControllerConfig, RelayConfig
from powercast.runtime.lifecycle import Daemon
from powercast.runtime.receiver import RECEIVE_BATCH, Receiver

if TYPE_CHECKING:
    from powercast.runtime.controller import ControllerDaemon
    from powercast.runtime.publisher import PublisherDaemon

__all__ = ["RECEIVE_BATCH", "ControllerDaemon", "Daemon", "PublisherDaemon", "Receiver", "serve"]


def __getattr__(name: str) -> Any:
    """Each daemon's module loads when first asked for: a controller starts without the
    publisher's sources, a publisher without the controller's actuators and actions."""
    if name == "ControllerDaemon":
        from powercast.runtime.controller import ControllerDaemon  # noqa: PLC0415

        return ControllerDaemon
    if name == "PublisherDaemon":
        from powercast.runtime.publisher import PublisherDaemon  # noqa: PLC0415

        return PublisherDaemon
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


async def serve(
    path: Path,
    config: cfg.Config,
    keyring: Keyring,
    *,
    dry_run: bool = False,
    own_process: bool = False,
) -> None:
    """Run the daemon for ``config``'s role until SIGTERM; ``own_process``: it is the
    whole process (the command line's daemons), and may settle the process's memory.

    A startup failure (NetworkError) comes out bare, not wrapped in an ExceptionGroup,
    so the command line can print it as one line.
    """
    daemon: Daemon[Any]
    if isinstance(config, ControllerConfig):
        from powercast.runtime.controller import ControllerDaemon  # noqa: PLC0415

        daemon = ControllerDaemon(path, config, keyring, dry_run=dry_run)
    elif isinstance(config, RelayConfig):
        from powercast.runtime.relay import RelayDaemon  # noqa: PLC0415  # aiomqtt only here

        daemon = RelayDaemon(path, config, keyring)
    else:
        from powercast.runtime.publisher import PublisherDaemon  # noqa: PLC0415

        daemon = PublisherDaemon(path, config, keyring)
    daemon.own_process = own_process
    try:
        await daemon.run()
    except* net.NetworkError as group:
        raise group.exceptions[0] from None

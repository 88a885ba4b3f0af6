"""The one base of every error an operator can act on, and the exit status it means.

Each module raises its own kind (``ConfigError``, ``NetworkError``...), worded as the one
line to show; ``cli.main`` prints that line and exits with the class's ``exit_code``.
Anything else reaching ``main`` is a bug, reported as such.

=========================  ====  ====================================================
class                      exit  meaning
=========================  ====  ====================================================
PowercastError             1     the base; a failure that may pass
net.NetworkError           1     a port in use, no multicast route yet
control.ControlError       1     no daemon on the control socket, or it refused
diagram.DiagramError       1     no Graphviz or pydot here, or a file not written
UsageError                 2     flags the command refuses; nothing was done
config.ConfigError         78    a config that must not be used
auth.KeyringError          78    a key or key directory that must not be used
net.NetworkConfigError     78    a network setting this host cannot have
=========================  ====  ====================================================

78 is sysexits' EX_CONFIG: the units do not restart a daemon that exits with it.
"""

from __future__ import annotations

from typing import ClassVar, Final

EX_CONFIG: Final = 78
"""sysexits' "configuration error": retrying cannot help, so the units do not restart."""


class PowercastError(Exception):
    """An error an operator can act on; ``str()`` is the one line to show."""

    exit_code: ClassVar[int] = 1


class UsageError(PowercastError):
    """Flags that make no sense together or a value no receiver would take: nothing done."""

    exit_code = 2

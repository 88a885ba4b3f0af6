"""The fan policy's states, in one table: each state's name and whether its fans run.

Everything else is derived from :class:`State`: the chart's states (policy.FanChart, in
this order, the first one initial), the names a config's ``on = "..."`` accepts, the
state file, status, metrics and the logs, which all write a state as its name: a state
is a ``str`` equal to its name, and prints as its name.
"""

from __future__ import annotations

import enum
from typing import Final


class State(enum.StrEnum):
    """A state of a zone's fans; the value (its name) is what logs and files carry.

    The member's name is the value too, so the chart's state ids, its events
    (``to_shedding``) and the diagram read the same as the logs."""

    # entered when (README's "How it decides" says it in full):
    failsafe = "failsafe"  # no trustworthy data: at start, stale, power unknown
    normal = "normal"  # power online
    on_battery = "on_battery"  # on battery: the debounce before shedding
    shedding = "shedding"  # still on battery after the debounce, and cool enough
    thermal_override = "thermal_override"  # on battery but too hot
    manual_on = "manual_on"  # an operator's override: fans on
    manual_off = "manual_off"  # an operator's override: fans off; never beats heat

    @property
    def fans_on(self) -> bool:
        """Whether the fans run in this state."""
        return self not in FANS_OFF


INITIAL: Final = State.failsafe
"""Where every zone starts, and where it goes when in doubt."""

FANS_OFF: Final = frozenset({State.shedding, State.manual_off})
"""The only states that turn the fans off: when in doubt, the fans run."""

FANS_ON: Final[dict[State, bool]] = {state: state.fans_on for state in State}
"""Whether each state runs the fans, in the table's order."""

"""What ``powercast config init --role R`` prints: a commented config per role.

Each runs as printed on a node with the package installed: it names no program or file
that a site must first provide (those are commented-out examples; what runs in their
place, a simulated UPS and fans that are only logged, says so), and `config check`
accepts it once the keys are there. Lines marked CHANGE are what a site sets.
"""

from __future__ import annotations

import json
from typing import Final

from powercast import config as cfg

PUBLISHER: Final = """\
# powercast publisher: reads a UPS's power and temperatures and announces them on the
# multicast group. Install as /etc/powercast/publisher.toml; check with:
#   powercast config check /etc/powercast/publisher.toml
role = "publisher"

# CHANGE: the name controllers know this publisher by (their policy.publishers).
# Letters, digits and . _ : @ - only, at most 64 characters.
id = __ID__

heartbeat_s = 1.0          # an announcement every this many seconds, and at each change
tal_factor = 3.0           # each is valid for heartbeat_s * tal_factor, then fans fail safe

[network]
# CHANGE: the control network the controllers listen on: an interface name (eth1) or
# one of its addresses. 127.0.0.1 reaches only controllers on this host.
interface = "127.0.0.1"
group = "239.1.1.1"        # the same group and port on every node
port = 5001
ttl = 1                    # 1 keeps announcements on this segment
loop = true                # also deliver to a controller on this host

[auth]
# Key files <id>.key; empty: $CREDENTIALS_DIRECTORY (the unit's LoadCredential=), else
# /etc/powercast/keys. Make the key once, copy the same file to every node:
#   powercast keygen 1 /etc/powercast/keys/1.key
# `powercast keygen --show` prints its fingerprint, to compare between nodes.
keys_dir = ""
key_id = 1                 # the key to sign with

# CHANGE: where power and temperatures come from. As printed, a simulated UPS that is
# always online: controllers never shed the fans, and no outage is seen. Replace this
# source with one of the examples below (uncomment it and set its keys).
[[sources]]
kind = "simulated"
timeline = [{ power = { status = "online" } }]

# A UPS behind NUT's upsd (`upsc -l` lists the names):
# [[sources]]
# kind = "nut"
# ups = "ups"
# host = "127.0.0.1"

# A UPS's SNMP agent (UPS-MIB), community read from a file only root and powercast read:
# [[sources]]
# kind = "snmp"
# host = "192.0.2.20"
# community_file = "/etc/powercast/snmp.community"

# This host's temperature sensors (`powercast config check` says which match):
# [[sources]]
# kind = "hwmon"
# sensors = ["coretemp.*"]

[log]
level = "info"
format = "auto"            # journal under systemd, console on a terminal
"""

CONTROLLER: Final = """\
# powercast controller: hears the publishers and runs or sheds the fans. Install as
# /etc/powercast/controller.toml; check with:
#   powercast config check /etc/powercast/controller.toml
#
# As printed it runs, decides and reports (`powercast status`), but MOVES NO FANS: its
# actuator only writes "fans on"/"fans off" to the system log (CHANGE it, below).
role = "controller"

[network]
# CHANGE: the control network the publishers send on: an interface name (eth1) or one
# of its addresses. 127.0.0.1 hears only publishers on this host.
interface = "127.0.0.1"
group = "239.1.1.1"        # the same group and port as the publishers
port = 5001

[auth]
# Key files <id>.key, the same files as the publishers'; empty: $CREDENTIALS_DIRECTORY
# (the unit's LoadCredential=), else /etc/powercast/keys. Make the key once, copy it:
#   powercast keygen 1 /etc/powercast/keys/1.key
# `powercast keygen --show` and `powercast status` print its fingerprint: the same key
# shows the same fingerprint on every node.
keys_dir = ""
mode = "enforce"           # drop datagrams without a good tag

[policy]
# CHANGE: your publishers' ids; empty: every publisher heard counts.
publishers = []
temp_high_c = 35.0         # at or above, the fans run even on battery
shed_after_s = 5.0         # on battery this long before the fans are shed
restore_after_s = 10.0     # power back this long before shed fans are restored

# CHANGE: what moves the fans. As printed, a stand-in that only logs (journalctl -t
# powercast-fans): replace it with one of the examples below, pointed at your fans.
[[actuators]]
kind = "command"
on_argv = ["logger", "-t", "powercast-fans", "fans on"]
off_argv = ["logger", "-t", "powercast-fans", "fans off"]

# A fan PWM in sysfs (ls /sys/class/hwmon/*/pwm*), read back to verify:
# [[actuators]]
# kind = "hwmon"
# path = "/sys/class/hwmon/hwmon2/pwm1"
# on_value = 255
# off_value = 0
# enable_path = "/sys/class/hwmon/hwmon2/pwm1_enable"
#
# Programs of your own that switch the fans (run without a shell):
# [[actuators]]
# kind = "command"
# on_argv = ["/usr/local/sbin/fans", "on"]
# off_argv = ["/usr/local/sbin/fans", "off"]
# verify_argv = ["/usr/local/sbin/fans", "status"]
#
# A coil on a Modbus TCP fan drive:
# [[actuators]]
# kind = "modbus"
# host = "192.0.2.10"
# coil = 0

# Commands run on entering a state, to tell someone (not to move fans):
# [[actions]]
# on = "shedding"
# argv = ["logger", "-t", "powercast", "fans shed"]

[log]
level = "info"
format = "auto"            # journal under systemd, console on a terminal
"""

RELAY: Final = """\
# powercast relay: carries this segment's announcements to a topic on an MQTT broker, and
# multicasts here what other segments' relays published. Datagrams go byte for byte, still
# signed: the relay needs no keys. Install as /etc/powercast/relay.toml; check with:
#   powercast config check /etc/powercast/relay.toml
role = "relay"

# both: out and in; to_broker: only send this segment's out; from_broker: only bring in.
direction = "both"

[network]
# CHANGE: this segment's control network: an interface name (eth1) or its address.
interface = "127.0.0.1"
group = "239.1.1.1"        # the group its publishers and controllers use
port = 5001
ttl = 1
loop = true                # controllers on this host hear what the relay multicasts

[broker]
# CHANGE: the broker every relay of the group meets at. As printed it tries this host's
# and says in `powercast status` while it cannot connect.
host = "127.0.0.1"
port = 1883
topic = "powercast/announcements"   # one topic per group
# username = "powercast"
# password_file = "/etc/powercast/broker.password"

[log]
level = "info"
format = "auto"
"""


def template(role: cfg.Role) -> str:
    """The commented config ``config init`` prints for ``role``."""
    if role == "publisher":
        return PUBLISHER.replace("__ID__", json.dumps(cfg.host_id() or "publisher"))
    return CONTROLLER if role == "controller" else RELAY

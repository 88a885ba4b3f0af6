"""Multicast UDP sockets, opened the way that works on Linux, with one-line errors.

Why this file exists: the obvious way to write a multicast sender and receiver has
traps that fail silently (each measured on Linux 6.x):

* joining a group on the *sending* socket does not choose where datagrams go; the kernel
  routes them like any other (default route, or ``ENETUNREACH``), so the sender sets
  ``IP_MULTICAST_IF`` / ``IPV6_MULTICAST_IF`` explicitly;
* a receiver bound to the wildcard address gets every group on its port, and with
  ``IP_MULTICAST_ALL`` left at 1 even groups joined by *other* sockets, so receivers bind
  to the group itself and clear ``IP_MULTICAST_ALL``;
* several listeners on one host share ``group:port`` only with ``SO_REUSEADDR``.

Every failure an operator can cause (a wrong interface, group, port, a port in use, no
multicast route) comes out as :class:`NetworkError` with one line naming the setting
(:class:`NetworkConfigError` when the setting itself is wrong, which retrying cannot fix),
e.g. ``network.interface: no interface with this name on this host (expected ..., got 'eth9')``.
Only stdlib, no asyncio: the runtime wraps the returned non-blocking sockets.
"""

from __future__ import annotations

import array
import contextlib
import errno
import fcntl
import ipaddress
import socket
import struct
from collections.abc import Callable

from powercast.errors import EX_CONFIG, PowercastError

__all__ = [
    "NetworkConfigError",
    "NetworkError",
    "check_local_address",
    "network_error",
    "open_receiver",
    "open_sender",
    "open_unicast_receiver",
    "open_unicast_sender",
    "resolve_interface",
    "validate_group",
]

# Linux constants the socket module may lack (values from <linux/in.h>, <linux/in6.h>,
# <linux/sockios.h>); getattr keeps the module's value where it has one.
IP_MULTICAST_ALL: int = getattr(socket, "IP_MULTICAST_ALL", 49)
IPV6_MULTICAST_ALL: int = getattr(socket, "IPV6_MULTICAST_ALL", 29)
_SIOCGIFCONF = 0x8912
_SIOCGIFADDR = 0x8915
_IFNAMSIZ = 16
# struct ifreq = name + a union whose largest member is struct ifmap (two longs, a short,
# three chars, padded to a long) or struct sockaddr (16 bytes): 40 bytes on 64-bit Linux.
_IFREQ_SIZE = _IFNAMSIZ + max(16, struct.calcsize("LLHBBB0L"))
_IF_INET6 = "/proc/net/if_inet6"

RECEIVE_BUFFER = 256 * 1024
"""Receive buffer asked for (the kernel doubles it, capped by net.core.rmem_max): room for
several hundred announcements while the loop is busy, and no more. Under a flood of
forgeries a bigger buffer only holds more of them in front of the real news: with 4 MiB
here, a state change waited p50 100 ms behind them; with 256 KiB, 25 ms."""

_INTERFACE_EXPECTED = "an interface name such as 'eth0' or one of this host's addresses"
_IPV6_SCOPE_LINK = 2

_Fail = Callable[[OSError, str], "NetworkError"]
"""Per-call translator of an OSError (and what was being done) into a NetworkError."""


class NetworkError(PowercastError):
    """One clear line for the operator, naming the setting, what went wrong, what was
    expected and what was given, e.g. "network.interface: no interface with this name on
    this host (expected an interface name such as 'eth0' or one of this host's addresses,
    got 'eth9')". The daemon prints it as is; no traceback is needed."""


class NetworkConfigError(NetworkError):
    """A setting names what this host does not have or a value that is not one (no such
    interface, an address no interface holds, a group that is not multicast, a port out
    of range): a mistake in the config, not a passing state. Retrying cannot help, so a
    daemon exits EX_CONFIG on it, which its unit does not restart on. Every other
    NetworkError (a port in use, no multicast route yet) may pass: exit 1, and restart."""

    exit_code = EX_CONFIG


# -- validation ---------------------------------------------------------------------------


def validate_group(group: str, setting: str) -> None:
    """Raise NetworkError unless ``group`` is an IPv4 or IPv6 multicast address.

    Checked before any socket exists so a typo names ``<setting>.group`` rather than
    surfacing later as an obscure errno from bind or join."""
    _parse_group(group, setting)


def _parse_group(group: str, setting: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The parsed group address; the address family of every socket follows from it."""
    key = f"{setting}.group"
    expected = "a multicast address such as 239.255.0.1 or ff15::1"
    if not isinstance(group, str):
        raise NetworkConfigError(f"{key}: not a string (expected {expected}, got {group!r})")
    if "%" in group:
        raise NetworkConfigError(
            f"{key}: a scope suffix is not accepted here, give the interface in "
            f"{setting}.interface (expected {expected}, got {group!r})"
        )
    try:
        address = ipaddress.ip_address(group)
    except ValueError:
        raise NetworkConfigError(
            f"{key}: not an IP address (expected {expected}, got {group!r})"
        ) from None
    if not address.is_multicast:
        raise NetworkConfigError(
            f"{key}: not a multicast address (expected an address in 224.0.0.0/4 or "
            f"ff00::/8, such as 239.255.0.1 or ff15::1, got {group!r})"
        )
    return address


def _validate_port(port: int, setting: str) -> None:
    """Port 0 would bind an ephemeral port no publisher knows; reject it with the rest."""
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise NetworkConfigError(f"{setting}.port: out of range (expected 1..65535, got {port!r})")


# -- interfaces ---------------------------------------------------------------------------


def resolve_interface(
    interface: str, family: int, *, setting: str = "network"
) -> tuple[int, str | None]:
    """``interface`` by name ('lo', 'eth0') or address ('127.0.0.1', '::1') ->
    (ifindex, address or None).

    Resolved here rather than left to the kernel so an unknown interface gives one line
    naming the setting, and so a name and an address work the same way in the config.
    The address is returned only when one was given (IPv4 senders select by it)."""
    key = f"{setting}.interface"
    if not isinstance(interface, str) or not interface:
        raise NetworkConfigError(
            f"{key}: no interface given (expected {_INTERFACE_EXPECTED}, got {interface!r})"
        )
    try:
        address = ipaddress.ip_address(interface)
    except ValueError:
        return _index_of_name(interface, key), None
    if address.version == 4 and family != socket.AF_INET:
        raise NetworkConfigError(
            f"{key}: an IPv4 address cannot carry an IPv6 group (expected an interface "
            f"name or one of this host's IPv6 addresses, got {interface!r})"
        )
    if address.version == 6 and family != socket.AF_INET6:
        raise NetworkConfigError(
            f"{key}: an IPv6 address cannot carry an IPv4 group (expected an interface "
            f"name or one of this host's IPv4 addresses, got {interface!r})"
        )
    if isinstance(address, ipaddress.IPv4Address):
        found = _ipv4_address_index(address)
    else:
        found = _ipv6_address_index(address, key, interface)
    if found is None:
        raise NetworkConfigError(
            f"{key}: no interface on this host has this address "
            f"(expected {_INTERFACE_EXPECTED}, got {interface!r})"
        )
    return found, str(address)


def check_local_address(address: str, setting: str) -> None:
    """Raise NetworkConfigError unless this host can listen on ``address``: one of its
    interfaces holds it, or it is a wildcard (0.0.0.0, ::) or IPv4 loopback (all of
    127.0.0.0/8 is local on Linux). A host name is left to the resolver."""
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return
    if parsed.is_unspecified or (parsed.version == 4 and parsed.is_loopback):
        return
    if isinstance(parsed, ipaddress.IPv4Address):
        found = _ipv4_address_index(parsed)
    else:
        found = _ipv6_address_index(parsed, setting, address)
    if found is None:
        raise NetworkConfigError(
            f"{setting}: no interface on this host has this address (expected one of this"
            f" host's addresses, or 0.0.0.0 or :: for all of them, got {address!r})"
        )


def _index_of_name(name: str, key: str) -> int:
    """if_nametoindex, with the kernel's ENODEV turned into a line naming the setting."""
    try:
        return socket.if_nametoindex(name)
    except (OSError, ValueError):
        raise NetworkConfigError(
            f"{key}: no interface with this name on this host "
            f"(expected {_INTERFACE_EXPECTED}, got {name!r})"
        ) from None


def _ipv4_address_index(address: ipaddress.IPv4Address) -> int | None:
    """Index of the interface holding ``address``, from SIOCGIFCONF.

    SIOCGIFCONF lists every IPv4 address (secondary ones too, under their label such as
    'eth0:1'), where SIOCGIFADDR per interface would only show the primary one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        size = 64 * _IFREQ_SIZE
        while True:
            buffer = array.array("B", bytes(size))
            pointer, _ = buffer.buffer_info()
            request = struct.pack("iP", size, pointer)
            reply = fcntl.ioctl(probe.fileno(), _SIOCGIFCONF, request)
            used: int = struct.unpack("iP", reply)[0]
            if used < size:  # a full buffer may have been truncated: try again, larger
                break
            size *= 2
    data = buffer.tobytes()[:used]
    wanted = address.packed
    for offset in range(0, used - _IFREQ_SIZE + 1, _IFREQ_SIZE):
        entry = data[offset : offset + _IFREQ_SIZE]
        family = struct.unpack_from("H", entry, _IFNAMSIZ)[0]
        # sockaddr_in: family (2), port (2), address (4)
        if family == socket.AF_INET and entry[_IFNAMSIZ + 4 : _IFNAMSIZ + 8] == wanted:
            label = entry[:_IFNAMSIZ].split(b"\0", 1)[0].decode("ascii", "replace")
            try:
                return socket.if_nametoindex(label.split(":", 1)[0])
            except OSError:  # the interface went away between the two calls
                return None
    return None


def _primary_ipv4(ifindex: int) -> bytes:
    """The interface's primary IPv4 address (4 bytes), or 0.0.0.0 if it has none.

    A sender that picks its interface by index alone gets a source address chosen by
    scope: on 'lo' that is another interface's address, or 0.0.0.0 when there is none."""
    try:
        name = socket.if_indextoname(ifindex)
    except OSError:
        return bytes(4)
    request = struct.pack(f"{_IFNAMSIZ}s{_IFREQ_SIZE - _IFNAMSIZ}x", name.encode())
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            reply = fcntl.ioctl(probe.fileno(), _SIOCGIFADDR, request)
        except OSError:  # EADDRNOTAVAIL: no IPv4 address on it
            return bytes(4)
    return reply[_IFNAMSIZ + 4 : _IFNAMSIZ + 8]


def _ipv6_address_index(address: ipaddress.IPv6Address, key: str, given: str) -> int | None:
    """Index of the interface holding ``address``, from /proc/net/if_inet6.

    A link-local address exists on many interfaces; with a scope ('fe80::1%eth0') the
    scope must match, without one the first interface holding it is taken."""
    scope = address.scope_id
    wanted = ipaddress.IPv6Address(address.packed).exploded.replace(":", "")
    try:
        with open(_IF_INET6, encoding="ascii") as table:
            lines = table.read().splitlines()
    except OSError:
        raise NetworkConfigError(
            f"{key}: IPv6 is not enabled on this host (expected an IPv4 address or an "
            f"interface name with an IPv4 group, got {given!r})"
        ) from None
    for line in lines:
        fields = line.split()
        if len(fields) < 6 or fields[0] != wanted:
            continue
        index, name = int(fields[1], 16), fields[5]
        if scope is None or scope in (name, str(index)):
            return index
    return None


# -- errors -------------------------------------------------------------------------------


def network_error(
    err: OSError,
    *,
    setting: str,
    action: str,
    group: str,
    port: int,
    interface: str,
) -> NetworkError:
    """Turn an OSError from opening or using a multicast socket into one operator line.

    Public so the runtime can translate a failed ``sendto`` the same way; ``action`` says
    what was being done ("join the group", "send") for the errors that are not obviously
    about one setting."""
    code = err.errno
    reason = err.strerror or str(err)
    if code in (errno.ENODEV, errno.EADDRNOTAVAIL, errno.ENXIO):
        line = (
            f"{setting}.interface: cannot {action} on this interface: {reason} "
            f"(expected {_INTERFACE_EXPECTED}, got {interface!r})"
        )
    elif code in (errno.ENETUNREACH, errno.EHOSTUNREACH):
        line = (
            f"{setting}.interface: no multicast route to {group} through this interface; "
            f"the sending interface was probably not chosen, or it is down or has no "
            f"multicast route (expected an up interface with a route for the group, "
            f"got {interface!r})"
        )
    elif code == errno.EADDRINUSE:
        line = (
            f"{setting}.port: {group} port {port} is already taken by a socket that does not "
            f"share it (expected a free port or listeners that set SO_REUSEADDR, got {port})"
        )
    elif code in (errno.EACCES, errno.EPERM):
        line = (
            f"{setting}.port: permission denied to {action} on {group} port {port} "
            f"(expected a port >= 1024 or the CAP_NET_BIND_SERVICE/CAP_NET_ADMIN "
            f"capability, got {port})"
        )
    elif code == errno.ENOBUFS and action == "join the group":
        line = (
            f"{setting}.group: too many multicast memberships on this host "
            f"(expected at most net.ipv4.igmp_max_memberships groups, got {group!r})"
        )
    elif code == errno.EAFNOSUPPORT:
        line = (
            f"{setting}.group: this address family is not available on this host "
            f"(expected a group of an enabled IP version, got {group!r})"
        )
    else:
        line = (
            f"{setting}: cannot {action}: {reason} (expected a usable group, port and "
            f"interface, got group {group!r}, port {port}, interface {interface!r})"
        )
    return NetworkError(line)


# -- sockets ------------------------------------------------------------------------------


def open_sender(
    group: str,
    port: int,
    interface: str,
    *,
    ttl: int = 1,
    loop: bool = True,
    setting: str = "network",
) -> socket.socket:
    """Non-blocking UDP socket ready to ``sendto((group, port))``.

    The outgoing interface is set explicitly because joining a group does not choose it.
    ``ttl`` 1 keeps datagrams on the segment; ``loop`` lets listeners on this host hear
    them. The route is checked now (a UDP connect on a throwaway socket sends nothing),
    so a group that cannot leave through ``interface`` fails at startup with one line
    rather than at every send."""
    address = _parse_group(group, setting)
    _validate_port(port, setting)
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not 0 <= ttl <= 255:
        raise NetworkConfigError(f"{setting}.ttl: out of range (expected 0..255, got {ttl!r})")
    family = socket.AF_INET if address.version == 4 else socket.AF_INET6
    ifindex, if_address = resolve_interface(interface, family, setting=setting)

    def fail(err: OSError, action: str) -> NetworkError:
        return network_error(
            err, setting=setting, action=action, group=group, port=port, interface=interface
        )

    sock = _new_socket(family, fail)
    try:
        _configure_sender(
            sock, family, ifindex=ifindex, if_address=if_address, ttl=ttl, loop=loop, fail=fail
        )
        _check_route(address, port, ifindex=ifindex, if_address=if_address, fail=fail)
    except BaseException:
        sock.close()
        raise
    return sock


def _configure_sender(
    sock: socket.socket,
    family: int,
    *,
    ifindex: int,
    if_address: str | None,
    ttl: int,
    loop: bool,
    fail: _Fail,
) -> None:
    """Choose the outgoing interface, hop limit and loopback on ``sock``."""
    try:
        if family == socket.AF_INET:
            if if_address is not None:
                choice = socket.inet_aton(if_address)
            else:  # struct ip_mreqn: group (ignored here), source address, ifindex
                source = _primary_ipv4(ifindex)
                choice = struct.pack("4s4si", bytes(4), source, ifindex)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, choice)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, ttl)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, int(loop))
        else:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, ifindex)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, ttl)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, int(loop))
    except OSError as err:
        raise fail(err, "choose the sending interface") from err


def _check_route(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
    port: int,
    *,
    ifindex: int,
    if_address: str | None,
    fail: _Fail,
) -> None:
    """Ask the kernel for the route a datagram to the group would take.

    Done on a throwaway socket with the same interface choice, since connecting the real
    one would make it filter replies and refuse other destinations in asyncio."""
    family = socket.AF_INET if address.version == 4 else socket.AF_INET6
    with _new_socket(family, fail) as probe:
        _configure_sender(
            probe, family, ifindex=ifindex, if_address=if_address, ttl=1, loop=False, fail=fail
        )
        try:
            probe.connect(_sockaddr(address, port, ifindex))
        except OSError as err:
            raise fail(err, "send to the group") from err


def open_receiver(
    group: str, port: int, interface: str, *, setting: str = "network"
) -> socket.socket:
    """Non-blocking UDP socket that receives ``group:port`` joined on ``interface`` only.

    Bound to the group, not the wildcard, and with ``IP_MULTICAST_ALL`` off, so it never
    sees other groups on the same port; ``SO_REUSEADDR`` lets several listeners on one
    host share ``group:port``, each getting a copy."""
    address = _parse_group(group, setting)
    _validate_port(port, setting)
    family = socket.AF_INET if address.version == 4 else socket.AF_INET6
    ifindex, if_address = resolve_interface(interface, family, setting=setting)

    def fail(err: OSError, action: str) -> NetworkError:
        return network_error(
            err, setting=setting, action=action, group=group, port=port, interface=interface
        )

    sock = _new_socket(family, fail)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        with contextlib.suppress(OSError):  # best effort: smaller only risks drops in bursts
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        if family == socket.AF_INET:  # without this, groups joined by *other* sockets arrive
            try:
                sock.setsockopt(socket.IPPROTO_IP, IP_MULTICAST_ALL, 0)
            except OSError as err:
                raise fail(err, "turn off IP_MULTICAST_ALL") from err
        else:  # Linux >= 4.20; binding to the group already filters, so failure is fine
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_MULTICAST_ALL, 0)
        try:
            sock.bind(_sockaddr(address, port, ifindex))
        except OSError as err:
            raise fail(err, "listen") from err
        if family == socket.AF_INET:
            local = socket.inet_aton(if_address or "0.0.0.0")  # noqa: S104 (ip_mreqn "any")
            membership = struct.pack("4s4si", address.packed, local, ifindex)
            option = (socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP)
        else:
            membership = address.packed + struct.pack("@I", ifindex)
            option = (socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP)
        try:
            sock.setsockopt(*option, membership)
        except OSError as err:
            raise fail(err, "join the group") from err
    except BaseException:
        sock.close()
        raise
    return sock


def open_unicast_receiver(address: str, port: int, *, setting: str = "network") -> socket.socket:
    """Non-blocking UDP socket that receives datagrams sent to ``address:port`` itself.

    For controllers behind networks that block multicast (``network.unicast_listen``). It
    may share the port with the multicast receiver: ``IP_MULTICAST_ALL`` is off, so a
    wildcard bind here does not also collect the group's datagrams."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    key = f"{setting}.unicast_listen"

    def fail(err: OSError, action: str) -> NetworkError:
        if err.errno == errno.EADDRINUSE:
            line = f"port {port} on {address} is already taken (expected a free port)"
        elif err.errno == errno.EADDRNOTAVAIL:
            line = "no interface on this host has this address (expected one of its addresses)"
            return NetworkConfigError(f"{key}: {line}, got {address!r} port {port}")
        else:
            line = f"cannot {action}: {err.strerror or err}"
        return NetworkError(f"{key}: {line}, got {address!r} port {port}")

    sock = _new_socket(family, fail)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        with contextlib.suppress(OSError):
            if family == socket.AF_INET:
                sock.setsockopt(socket.IPPROTO_IP, IP_MULTICAST_ALL, 0)
            else:
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_MULTICAST_ALL, 0)
        try:
            sock.bind((address, port))
        except OSError as err:
            raise fail(err, "listen") from err
    except BaseException:
        sock.close()
        raise
    return sock


def open_unicast_sender(family: int, *, setting: str = "network") -> socket.socket:
    """Non-blocking, unbound UDP socket for ``sendto`` to unicast peers of ``family``."""

    def fail(err: OSError, action: str) -> NetworkError:
        return NetworkError(f"{setting}.unicast_peers: cannot {action}: {err.strerror or err}")

    return _new_socket(family, fail)


# -- helpers ------------------------------------------------------------------------------


def _new_socket(family: int, fail: _Fail) -> socket.socket:
    """A non-blocking UDP socket, for the runtime's event loop."""
    try:
        sock = socket.socket(family, socket.SOCK_DGRAM)
    except OSError as err:
        raise fail(err, "open a socket") from err
    sock.setblocking(False)
    return sock


def _sockaddr(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int, ifindex: int
) -> tuple[str, int] | tuple[str, int, int, int]:
    """Socket address of the group; interface- and link-local IPv6 scopes need the
    interface as scope id, or the kernel refuses to bind (EINVAL)."""
    if isinstance(address, ipaddress.IPv4Address):
        return str(address), port
    scope = address.packed[1] & 0x0F
    return str(address), port, 0, ifindex if scope <= _IPV6_SCOPE_LINK else 0

"""Multicast sockets from powercast.net, exercised with real sockets on loopback only.

Nothing here sends on the machine's real interfaces: every sender uses 127.0.0.1 / 'lo'
(IPv4) or '::1' / 'lo' (IPv6). Unknown-interface tests fail before any socket exists.
"""

from __future__ import annotations

import errno
import ipaddress
import itertools
import os
import select
import socket
from collections.abc import Iterator

import pytest

from powercast.net import (
    IP_MULTICAST_ALL,
    NetworkError,
    network_error,
    open_receiver,
    open_sender,
    resolve_interface,
    validate_group,
)

WAIT = 0.5
"""Seconds to wait for a datagram that should arrive (loopback delivers in microseconds)."""
QUIET = 0.2
"""Seconds to wait before concluding a datagram did not arrive."""

LO_INDEX = socket.if_nametoindex("lo")
IPV6_NO_ROUTE_ON_LO = (
    "needs IPv6 multicast on lo: with this kernel lo has no MULTICAST flag, so "
    "no ff00::/8 route is installed on it and sending gives ENETUNREACH (measured; even "
    "with that route added by hand in a scratch namespace nothing was delivered)"
)

_groups = itertools.count(1)


@pytest.fixture
def port() -> int:
    """A UDP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def group() -> str:
    """A fresh administratively scoped group per test, so tests never hear each other."""
    n = (os.getpid() * 64 + next(_groups)) % 65000 + 256
    return f"239.255.{n // 256}.{n % 256}"


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    """Sockets a test opened, closed afterwards whatever happens."""
    opened: list[socket.socket] = []
    yield opened
    for sock in opened:
        sock.close()


def other_group(group: str) -> str:
    """A second group next to ``group`` (same /16 of 239.255.0.0/16)."""
    a, b, c, d = (int(part) for part in group.split("."))
    return f"{a}.{b}.{c}.{(d + 1) % 256}"


def receive(sock: socket.socket, timeout: float = WAIT) -> bytes | None:
    """The next datagram on ``sock``, or None if none comes within ``timeout``."""
    readable, _, _ = select.select([sock], [], [], timeout)
    if not readable:
        return None
    return sock.recv(65535)


def ipv6_joined(interface: str, group: str) -> bool:
    """Whether ``group`` is joined on ``interface`` on this host, per /proc/net/igmp6."""
    wanted = ipaddress.IPv6Address(group).exploded.replace(":", "")
    with open("/proc/net/igmp6", encoding="ascii") as table:
        rows = [line.split() for line in table]
    return any(row[1:3] == [interface, wanted] for row in rows if len(row) >= 3)


def try_ipv6_sender(group: str, port: int, interface: str) -> socket.socket:
    """An IPv6 sender on loopback, or a skip naming the kernel limit found by experiment."""
    try:
        return open_sender(group, port, interface)
    except NetworkError as err:
        if "no multicast route" in str(err):
            pytest.skip(IPV6_NO_ROUTE_ON_LO)
        raise


@pytest.mark.unit
class TestValidateGroup:
    def test_accepts_ipv4_and_ipv6_multicast(self) -> None:
        """IPv4 (224.0.0.0/4) and IPv6 (ff00::/8) multicast groups pass."""
        validate_group("239.255.0.1", "network")
        validate_group("ff15::1", "network")

    @pytest.mark.parametrize("bad", ["10.0.0.1", "127.0.0.1", "::1", "fe80::1"])
    def test_rejects_unicast(self, bad: str) -> None:
        """A unicast address is refused, naming <setting>.group and the value."""
        with pytest.raises(NetworkError, match=r"^publisher\.network\.group: not a multicast") as e:
            validate_group(bad, "publisher.network")
        assert repr(bad) in str(e.value)

    def test_rejects_non_address(self) -> None:
        """Text that is no IP address is refused with the value quoted."""
        with pytest.raises(NetworkError, match=r"network\.group: not an IP address.*'eth0'"):
            validate_group("eth0", "network")

    def test_rejects_scope_suffix(self) -> None:
        """A scoped group ('ff02::1%lo') is refused: the interface has its own setting."""
        with pytest.raises(NetworkError, match=r"network\.group: .*network\.interface"):
            validate_group("ff02::1%lo", "network")


@pytest.mark.system
class TestResolveInterface:
    def test_ipv4_name(self) -> None:
        """An IPv4 interface given by name resolves to its index and no address."""
        assert resolve_interface("lo", socket.AF_INET) == (LO_INDEX, None)

    def test_ipv4_address(self) -> None:
        """An IPv4 address of this host resolves to its interface and keeps the address."""
        assert resolve_interface("127.0.0.1", socket.AF_INET) == (LO_INDEX, "127.0.0.1")

    def test_ipv6_address(self) -> None:
        """An IPv6 address of this host resolves to its interface (from /proc/net/if_inet6)."""
        assert resolve_interface("::1", socket.AF_INET6) == (LO_INDEX, "::1")

    def test_unknown_name(self) -> None:
        """An unknown interface name gives one line naming the setting and the value."""
        with pytest.raises(NetworkError, match=r"^network\.interface: no interface .*'eth9'"):
            resolve_interface("eth9", socket.AF_INET)

    def test_unknown_address(self) -> None:
        """An address no interface holds (127.0.0.2 is routed locally but not assigned) fails."""
        with pytest.raises(NetworkError, match=r"^x\.interface: no interface .*'127\.0\.0\.2'"):
            resolve_interface("127.0.0.2", socket.AF_INET, setting="x")

    def test_family_mismatch(self) -> None:
        """An IPv6 interface address with an IPv4 group is refused before the kernel sees it."""
        with pytest.raises(NetworkError, match=r"network\.interface: an IPv6 address .*'::1'"):
            resolve_interface("::1", socket.AF_INET)

    def test_empty(self) -> None:
        """An empty interface is refused: the kernel's choice is what the setting prevents."""
        with pytest.raises(NetworkError, match=r"network\.interface: no interface given"):
            resolve_interface("", socket.AF_INET)


@pytest.mark.system
class TestOpenSender:
    def test_options_applied(self, group: str, port: int, sockets: list[socket.socket]) -> None:
        """TTL, loop and the outgoing interface are set as asked, and the socket never blocks."""
        sender = open_sender(group, port, "127.0.0.1", ttl=3, loop=False)
        sockets.append(sender)
        assert sender.getsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL) == 3
        assert sender.getsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP) == 0
        chosen = sender.getsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, 4)
        assert socket.inet_ntoa(chosen) == "127.0.0.1"
        assert sender.getblocking() is False

    def test_defaults(self, group: str, port: int, sockets: list[socket.socket]) -> None:
        """By default datagrams stay on the segment (TTL 1) and loop back to local listeners."""
        sender = open_sender(group, port, "lo")
        sockets.append(sender)
        assert sender.getsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL) == 1
        assert sender.getsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP) == 1

    def test_by_name_uses_interface_address(
        self, group: str, port: int, sockets: list[socket.socket]
    ) -> None:
        """Chosen by name, the sender's source is the interface's own address, not 0.0.0.0."""
        receiver = open_receiver(group, port, "lo")
        sender = open_sender(group, port, "lo")
        sockets += [receiver, sender]
        sender.sendto(b"from-lo", (group, port))
        readable, _, _ = select.select([receiver], [], [], WAIT)
        assert readable
        data, (source, _) = receiver.recvfrom(100)
        assert (data, source) == (b"from-lo", "127.0.0.1")

    def test_ipv6_options_applied(self, port: int, sockets: list[socket.socket]) -> None:
        """IPv6 hop limit, loop and interface index are set as asked."""
        sender = try_ipv6_sender("ff02::4242:1", port, "lo")
        sockets.append(sender)
        assert sender.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF) == LO_INDEX
        assert sender.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS) == 1

    def test_ipv6_on_lo_fails_with_one_line(self, port: int) -> None:
        """Where lo has no IPv6 multicast route, opening says so on network.interface."""
        try:
            sender = open_sender("ff02::4242:2", port, "lo")
        except NetworkError as err:
            line = str(err)
        else:
            sender.close()
            pytest.skip("needs no IPv6 multicast on lo: this kernel routes it, no error to show")
        assert line.startswith("network.interface: no multicast route to ff02::4242:2")
        assert "'lo'" in line
        assert "\n" not in line

    def test_unknown_interface_name(self, group: str, port: int) -> None:
        """An unknown interface name is a NetworkError naming the setting and the value."""
        with pytest.raises(NetworkError, match=r"^publisher\.network\.interface: .*'eth9'"):
            open_sender(group, port, "eth9", setting="publisher.network")

    def test_unknown_interface_address(self, group: str, port: int) -> None:
        """An address not on this host is a NetworkError naming the setting and the value."""
        with pytest.raises(NetworkError, match=r"^network\.interface: .*'192\.0\.2\.254'"):
            open_sender(group, port, "192.0.2.254")

    def test_not_multicast(self, port: int) -> None:
        """A unicast group is a NetworkError on <setting>.group."""
        with pytest.raises(NetworkError, match=r"^network\.group: not a multicast .*'10\.1\.2\.3'"):
            open_sender("10.1.2.3", port, "127.0.0.1")

    @pytest.mark.parametrize("bad", [0, -1, 65536, True])
    def test_port_out_of_range(self, group: str, bad: int) -> None:
        """A port outside 1..65535 is a NetworkError on <setting>.port with the value."""
        with pytest.raises(NetworkError, match=rf"^network\.port: out of range .*got {bad!r}\)"):
            open_sender(group, bad, "127.0.0.1")

    @pytest.mark.parametrize("bad", [-1, 256])
    def test_ttl_out_of_range(self, group: str, port: int, bad: int) -> None:
        """A TTL outside 0..255 is a NetworkError on <setting>.ttl."""
        with pytest.raises(NetworkError, match=rf"^network\.ttl: out of range .*got {bad}\)"):
            open_sender(group, port, "127.0.0.1", ttl=bad)


@pytest.mark.system
class TestOpenReceiver:
    def test_bound_to_group_and_nonblocking(
        self, group: str, port: int, sockets: list[socket.socket]
    ) -> None:
        """The receiver is bound to group:port, not the wildcard, with IP_MULTICAST_ALL off."""
        receiver = open_receiver(group, port, "127.0.0.1")
        sockets.append(receiver)
        assert receiver.getsockname() == (group, port)
        assert receiver.getsockopt(socket.IPPROTO_IP, IP_MULTICAST_ALL) == 0
        assert receiver.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 1
        assert receiver.getblocking() is False

    def test_receive_buffer_raised(
        self, group: str, port: int, sockets: list[socket.socket]
    ) -> None:
        """The receive buffer is at least the kernel default (raised up to rmem_max)."""
        plain = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        receiver = open_receiver(group, port, "lo")
        sockets += [plain, receiver]
        default = plain.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        assert receiver.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= default

    def test_port_in_use(self, group: str, port: int, sockets: list[socket.socket]) -> None:
        """A port held without SO_REUSEADDR is a NetworkError on <setting>.port, not EADDRINUSE."""
        holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sockets.append(holder)
        holder.bind((group, port))
        with pytest.raises(NetworkError, match=rf"^network\.port: .*already taken.*got {port}\)"):
            open_receiver(group, port, "lo")

    def test_unknown_interface_name(self, group: str, port: int) -> None:
        """An unknown interface name is a NetworkError naming the setting and the value."""
        with pytest.raises(NetworkError, match=r"^subscriber\.network\.interface: .*'nosuch0'"):
            open_receiver(group, port, "nosuch0", setting="subscriber.network")

    def test_unknown_interface_address(self, group: str, port: int) -> None:
        """An address not on this host is a NetworkError naming the setting and the value."""
        with pytest.raises(NetworkError, match=r"^network\.interface: .*'198\.51\.100\.7'"):
            open_receiver(group, port, "198.51.100.7")

    def test_not_multicast(self, port: int) -> None:
        """A unicast group is a NetworkError on <setting>.group."""
        with pytest.raises(NetworkError, match=r"^network\.group: not a multicast"):
            open_receiver("127.0.0.1", port, "lo")

    def test_ipv6_joins_on_lo(self, port: int, sockets: list[socket.socket]) -> None:
        """An IPv6 link-local group is bound with lo as scope and joined on lo."""
        receiver = open_receiver("ff02::4242:3", port, "lo")
        sockets.append(receiver)
        assert receiver.getsockname() == ("ff02::4242:3", port, 0, LO_INDEX)
        assert ipv6_joined("lo", "ff02::4242:3")

    def test_ipv6_joins_by_address(self, port: int, sockets: list[socket.socket]) -> None:
        """A site-scope group joined via '::1' is bound without scope and joined on lo."""
        receiver = open_receiver("ff05::4242:4", port, "::1")
        sockets.append(receiver)
        assert receiver.getsockname() == ("ff05::4242:4", port, 0, 0)
        assert ipv6_joined("lo", "ff05::4242:4")


@pytest.mark.system
class TestDelivery:
    def test_by_address(self, group: str, port: int, sockets: list[socket.socket]) -> None:
        """A sender on 127.0.0.1 reaches a receiver joined on 127.0.0.1."""
        receiver = open_receiver(group, port, "127.0.0.1")
        sender = open_sender(group, port, "127.0.0.1")
        sockets += [receiver, sender]
        sender.sendto(b"hello", (group, port))
        assert receive(receiver) == b"hello"

    def test_by_name(self, group: str, port: int, sockets: list[socket.socket]) -> None:
        """Sender and receiver chosen by the name 'lo' (ip_mreqn with ifindex) work too."""
        receiver = open_receiver(group, port, "lo")
        sender = open_sender(group, port, "lo")
        sockets += [receiver, sender]
        sender.sendto(b"by-name", (group, port))
        assert receive(receiver) == b"by-name"

    def test_two_receivers_each_get_a_copy(
        self, group: str, port: int, sockets: list[socket.socket]
    ) -> None:
        """Two listeners on one group:port (SO_REUSEADDR) each receive every datagram."""
        first = open_receiver(group, port, "127.0.0.1")
        second = open_receiver(group, port, "lo")
        sender = open_sender(group, port, "127.0.0.1")
        sockets += [first, second, sender]
        sender.sendto(b"both", (group, port))
        assert receive(first) == b"both"
        assert receive(second) == b"both"

    def test_other_group_on_same_port_not_received(
        self, group: str, port: int, sockets: list[socket.socket]
    ) -> None:
        """A receiver of group A never gets group B's datagrams on the same port."""
        group_b = other_group(group)
        receiver_a = open_receiver(group, port, "127.0.0.1")
        receiver_b = open_receiver(group_b, port, "127.0.0.1")  # so B is joined on the host
        sender = open_sender(group, port, "127.0.0.1")
        sockets += [receiver_a, receiver_b, sender]
        sender.sendto(b"for-b", (group_b, port))
        assert receive(receiver_b) == b"for-b"
        assert receive(receiver_a, QUIET) is None
        sender.sendto(b"for-a", (group, port))
        assert receive(receiver_a) == b"for-a"
        assert receive(receiver_b, QUIET) is None

    @pytest.mark.parametrize("group6", ["ff02::4242:5", "ff01::4242:6"])
    def test_ipv6_on_lo(self, group6: str, port: int, sockets: list[socket.socket]) -> None:
        """An IPv6 sender on lo reaches a receiver joined on lo, where the kernel allows it."""
        receiver = open_receiver(group6, port, "lo")
        sockets.append(receiver)
        sender = try_ipv6_sender(group6, port, "lo")
        sockets.append(sender)
        sender.sendto(b"v6", (group6, port))
        data = receive(receiver)
        if data is None:
            pytest.skip(IPV6_NO_ROUTE_ON_LO)
        assert data == b"v6"


@pytest.mark.unit
class TestNetworkError:
    @pytest.mark.parametrize(
        ("code", "prefix"),
        [
            (errno.ENODEV, "network.interface: "),
            (errno.EADDRNOTAVAIL, "network.interface: "),
            (errno.ENETUNREACH, "network.interface: no multicast route"),
            (errno.EADDRINUSE, "network.port: "),
            (errno.EACCES, "network.port: permission denied"),
            (errno.EPERM, "network.port: permission denied"),
            (errno.EINVAL, "network: cannot send: "),
        ],
    )
    def test_errno_to_one_line(self, code: int, prefix: str) -> None:
        """Each errno an operator can cause becomes one line on the setting it concerns."""
        err = OSError(code, os.strerror(code))
        line = str(
            network_error(
                err,
                setting="network",
                action="send",
                group="239.1.1.1",
                port=5001,
                interface="eth0",
            )
        )
        assert line.startswith(prefix)
        assert "\n" not in line
        assert "(expected " in line
        assert ", got " in line

"""Where a budget-notification webhook may point: public addresses only (no SSRF into the
sidecar's own network), unless the operator allows networks (CRITIQUE_NOTIFY_ALLOWED_NETWORKS).

Checked twice: when the URL is set (a literal address, or `localhost`), and when a
notification is sent, on every address the host name resolves to at that moment (so a name
that resolved publicly when it was set cannot be re-pointed at 169.254.169.254 later); the
connection then goes to the address that was checked, never to a second lookup."""

from __future__ import annotations

import re
import socket
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network

IPAddress = IPv4Address | IPv6Address
Network = IPv4Network | IPv6Network

ALLOW_SETTING = "CRITIQUE_NOTIFY_ALLOWED_NETWORKS"
_NAT64 = ip_network("64:ff9b::/96")
_UNIQUE_LOCAL = ip_network("fc00::/7")  # well-known NAT64 prefix: the last 32 bits are an IPv4 address
# What inet_aton (and so getaddrinfo) reads as IPv4: 1 to 4 parts, each decimal, 0x-hex or
# 0-octal ("2130706433", "0x7f.1", "0177.0.0.1", "127.1").
_LEGACY_V4 = re.compile(r"(0[xX][0-9a-fA-F]*|[0-9]+)(\.(0[xX][0-9a-fA-F]*|[0-9]+)){0,3}")


class AddressRefused(Exception):
    """A webhook destination that is not public and not allowed."""


def parse_networks(text: str) -> tuple[Network, ...]:
    """'10.1.0.0/16, 127.0.0.1' -> networks (a bare address is a /32 or /128)."""
    return tuple(ip_network(part.strip(), strict=False) for part in text.split(",") if part.strip())


def literal_address(host: str) -> IPAddress | None:
    """The address a URL host names literally (as the resolver would read it), else None."""
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        return ip_address(host)
    except ValueError:
        pass
    if _LEGACY_V4.fullmatch(host):
        try:
            return IPv4Address(socket.inet_aton(host))
        except OSError:
            return None  # not an address, and no name either: delivery fails to resolve it
    return None


def _kind(ip: IPAddress) -> str | None:
    """Why the address is not public, or None if it is."""
    if isinstance(ip, IPv6Address) and ip in _UNIQUE_LOCAL:
        return "unique-local"
    for flag, name in (
        ("is_loopback", "loopback"),
        ("is_unspecified", "unspecified"),
        ("is_link_local", "link-local"),
        ("is_multicast", "multicast"),
        ("is_private", "private"),
        ("is_reserved", "reserved"),
    ):
        if getattr(ip, flag):
            return name
    if isinstance(ip, IPv6Address) and ip.is_site_local:
        return "site-local"
    return None if ip.is_global else "not globally routable"


def _embedded_v4(ip: IPv6Address) -> IPv4Address | None:
    """The IPv4 address an IPv6 one carries to (v4-mapped, 6to4, NAT64), if any."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64:
        return IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def refusal(ip: IPAddress, allowed: tuple[Network, ...] = ()) -> str | None:
    """None if a webhook may go to `ip`; else why not ("10.0.0.5 is a private address")."""
    inner = _embedded_v4(ip) if isinstance(ip, IPv6Address) else None
    if inner is None:
        candidates: list[IPAddress] = [ip]
    elif isinstance(ip, IPv6Address) and ip.ipv4_mapped is not None:
        candidates = [inner]  # only ever the IPv4 address (Python versions differ on ::ffff:0:0/96 itself)
    else:
        candidates = [inner, ip]  # the address it reaches names the reason
    if any(c in net for c in candidates for net in allowed if c.version == net.version):
        return None
    for c in candidates:
        kind = _kind(c)
        if kind is not None:
            via = f" (which reaches {c})" if c is not ip else ""
            return f"{ip}{via} is not a public address ({kind})"
    return None


def host_refusal(host: str, allowed: tuple[Network, ...] = ()) -> str | None:
    """At settings time: a literal address that is refused, or a localhost name."""
    name = host.rstrip(".").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return (
            None if refusal(IPv4Address("127.0.0.1"), allowed) is None else f"{host} is not a public address (loopback)"
        )
    ip = literal_address(host)
    return None if ip is None else refusal(ip, allowed)


def split_host_port(url: str) -> str:
    """The host of an absolute http(s) URL as written (IPv6 in brackets), without the port."""
    authority = url.split("/", 3)[2]
    if authority.startswith("["):
        return authority[: authority.find("]") + 1]
    return authority.rsplit(":", 1)[0] if ":" in authority else authority

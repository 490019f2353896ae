"""IPv4 as upstream reads what users wrote: ParseIPSloppy/ParseCIDRSloppy (k8s.io/utils/net).

Leading zeros are decimal ("10.180.00.001" is 10.180.0.1), not octal as inet_aton has it; what
is not IPv4 (IPv6, garbage) is None, and each caller skips it as upstream does.

    >>> sloppy_ipv4("10.180.00.001"), sloppy_ipv4_cidr("203.0.113.000/025"), sloppy_ipv4("fd00::1")
    ('10.180.0.1', '203.0.113.0/25', None)
"""

from __future__ import annotations

import ipaddress


def sloppy_ipv4(text: str) -> str | None:
    """An IPv4 address read as upstream's ParseIPSloppy reads it ("10.180.00.001" -> "10.180.0.1");
    None for anything else (another family, garbage)."""
    parts = text.strip().split(".")
    if len(parts) != 4 or not all(p.isascii() and p.isdigit() and int(p) < 256 for p in parts):
        return None
    return ".".join(str(int(p)) for p in parts)


def sloppy_ipv4_network(text: str) -> ipaddress.IPv4Network | None:
    """An IPv4 CIDR as ParseCIDRSloppy reads it, as a network (host bits cleared); None otherwise."""
    addr, _, bits = text.strip().partition("/")
    ip = sloppy_ipv4(addr)
    if ip is None or not bits.isascii() or not bits.isdigit() or int(bits) > 32:
        return None
    return ipaddress.IPv4Network(f"{ip}/{int(bits)}", strict=False)


def sloppy_ipv4_cidr(text: str) -> str | None:
    """An IPv4 CIDR as ParseCIDRSloppy reads it, canonical ("203.0.113.000/025" -> "203.0.113.0/25")."""
    net = sloppy_ipv4_network(text)
    return None if net is None else str(net)

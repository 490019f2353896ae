"""Upstream kube-proxy's names for per-service kernel objects.

Both modes hash the service port name so that a chain name is stable across restarts and
nodes, and short enough for the kernel's limits:

* iptables chain names must be <= 28 characters, so `KUBE-SVC-` etc. get 16 base32
  characters of sha256(servicePortName + protocol) (`portProtoHash` in upstream's
  pkg/proxy/iptables/proxier.go).  Example: "ns4/svc4:p80" + "tcp" -> 4SW47YFZTEDKD3PK.
* nftables allows 256 characters, so names keep the readable part after 8 hash characters
  (`hashAndTruncate` in pkg/proxy/nftables/proxier.go, capped at 240 characters, the cut
  marked with "...").
  Example: "ns1/svc1/tcp/p80" -> "ULMVA6XW-ns1/svc1/tcp/p80".
"""

from __future__ import annotations

import hashlib

IPTABLES_HASH_LEN = 16
NFT_HASH_LEN = 8
NFT_NAME_MAX = 240
_B32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"  # RFC 4648 base32, as Go's base32.StdEncoding
_B32_PAIRS = [a + b for a in _B32 for b in _B32]  # every 10-bit value as two base32 characters


def hash16(text: str) -> str:
    """The 16 base32 characters of sha256(text) upstream's iptables chain names use.

    16 base32 characters are exactly the digest's first 80 bits, encoded here 10 bits at a time
    (base64.b32encode is pure Python: it was the hot spot of a 10k-service render).

    >>> hash16("ns4/svc4:p80" + "tcp")
    '4SW47YFZTEDKD3PK'
    """
    n = int.from_bytes(hashlib.sha256(text.encode()).digest()[:10], "big")
    p = _B32_PAIRS
    return (
        p[n >> 70] + p[n >> 60 & 1023] + p[n >> 50 & 1023] + p[n >> 40 & 1023]
        + p[n >> 30 & 1023] + p[n >> 20 & 1023] + p[n >> 10 & 1023] + p[n & 1023]
    )  # fmt: skip


def port_proto_hash(service_port_name: str, protocol: str) -> str:
    """16-char hash used by KUBE-SVC/SVL/EXT/FW chains.

    >>> port_proto_hash("ns4/svc4:p80", "tcp")
    '4SW47YFZTEDKD3PK'
    """
    return hash16(service_port_name + protocol.lower())


def endpoint_hash(service_port_name: str, protocol: str, endpoint: str) -> str:
    """16-char hash used by KUBE-SEP chains; `endpoint` is "ip:port".

    >>> endpoint_hash("ns1/svc1:p80", "tcp", "10.180.0.1:80")
    'SXIVWICOYRO3J4NJ'
    """
    return hash16(service_port_name + protocol.lower() + endpoint)


def iptables_chain(prefix: str, service_port_name: str, protocol: str) -> str:
    """E.g. iptables_chain("KUBE-SVC-", "default/kubernetes:https", "tcp") -> KUBE-SVC-NPX46M4PTMTKRN6Y."""
    return prefix + port_proto_hash(service_port_name, protocol)


def iptables_sep_chain(service_port_name: str, protocol: str, endpoint: str) -> str:
    return "KUBE-SEP-" + endpoint_hash(service_port_name, protocol, endpoint)


def hash_and_truncate(name: str) -> str:
    """nftables' readable hashed name.

    >>> hash_and_truncate("ns1/svc1/tcp/p80")
    'ULMVA6XW-ns1/svc1/tcp/p80'
    """
    # the first 8 base32 characters encode exactly the first 40 bits of the digest
    n = int.from_bytes(hashlib.sha256(name.encode()).digest()[:5], "big")
    hashed = "".join([_B32[(n >> s) & 31] for s in (35, 30, 25, 20, 15, 10, 5, 0)]) + "-" + name
    return hashed if len(hashed) <= NFT_NAME_MAX else hashed[: NFT_NAME_MAX - 3] + "..."


def nft_service_base(namespace: str, name: str, protocol: str, port_name: str) -> str:
    """Upstream's servicePortChainNameBase: "ns/name/proto/portname"."""
    return f"{namespace}/{name}/{protocol.lower()}/{port_name}"


def nft_endpoint_base(service_base: str, ip: str, port: int) -> str:
    """Upstream's servicePortEndpointChainNameBase: base + "__" + ip + "/" + port (IPv6 ':' -> '.')."""
    return f"{service_base}__{ip.replace(':', '.')}/{port}"

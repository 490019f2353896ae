"""What the host's root namespace shows, for tests that prove a lab leaves it as found."""

from __future__ import annotations

import os
import subprocess


def host_snapshot() -> dict[str, str]:
    """Links, addresses, routes, rules and named netns of the calling process's namespaces."""

    def out(*argv: str) -> str:
        return subprocess.run(argv, capture_output=True, text=True, check=False).stdout

    return {
        "links": out("ip", "-o", "link", "show"),
        "addrs": out("ip", "-o", "addr", "show"),
        "routes": out("ip", "route", "show", "table", "all"),
        "iptables": "\n".join(l for l in out("iptables-save").splitlines() if not l.startswith("#")),
        "ip6tables": "\n".join(l for l in out("ip6tables-save").splitlines() if not l.startswith("#")),
        "nft": out("nft", "list", "ruleset"),
        "netns": "\n".join(sorted(os.listdir("/run/netns"))) if os.path.isdir("/run/netns") else "",
    }


def assert_same(before: dict[str, str], after: dict[str, str]) -> None:
    changed = [k for k in before if before[k] != after[k]]
    assert not changed, f"the host's root namespace changed: {changed}"

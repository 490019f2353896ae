"""Loading a sync's nft script: one transaction, as upstream, unless the kernel refuses the message.

`nft -f` sends the whole script as one netlink batch, in one message; the kernel refuses a
message larger than the socket's send buffer ("Message too long").  nft raises that buffer
with SO_SNDBUFFORCE, which needs CAP_NET_ADMIN over the host: root of a user namespace (a
learner's container) has it only up to net.core.wmem_max, about 400 KB of netlink, which a few
thousand Services exceed.  Then the script goes in as many consecutive transactions as it
takes, cut between commands (each line is one), in order, and the sync says so: between two of
them the kernel holds a half-written table, which upstream's single transaction never shows.
"""

from __future__ import annotations

from kplab.cluster.run import run
from kplab.errors import CommandError

TOO_LONG = "Message too long"


def wmem_max() -> int:
    try:
        with open("/proc/sys/net/core/wmem_max") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 212992  # the kernel's default


def load(netns: str, text: str, timeout: float = 600) -> int:
    """`nft -f` of `text` in `netns`; returns how many transactions it took (1 but where refused)."""
    try:
        run(["nft", "-f", "-"], netns=netns, input=text, timeout=timeout)
        return 1
    except CommandError as e:
        if TOO_LONG not in str(e):
            raise
    lines = text.splitlines(keepends=True)
    # a first cut that fits: netlink takes a few times the text's bytes; halve again if refused
    size = max(1, min(len(lines) // 2, wmem_max() // 4 // max(1, len(text) // max(1, len(lines)))))
    start, count = 0, 0
    while start < len(lines):
        chunk = "".join(lines[start:start + size])
        try:
            run(["nft", "-f", "-"], netns=netns, input=chunk, timeout=timeout)
        except CommandError as e:
            if TOO_LONG not in str(e) or size == 1:
                raise
            size //= 2
            continue
        start, count = start + size, count + 1
    return count

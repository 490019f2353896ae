"""Reading the kernel back: rule dumps explained by Service, conntrack, traces, counters.

`explain` (pure: any node's iptables-save / nft / ipvsadm output), `conntrack` (entries of a
lab node, filtered or cleared by Service), `trace` (one packet's path through a lab node,
from the kernel's own tracing), `counters` (per-endpoint packet counts).
"""

"""Packets with scapy inside lab namespaces: craft and send, capture while sending.

`api` is what code uses (`packets(lab, name).syn("web:80")`, `capture(lab, name, ...)`);
`helper` is the per-namespace process that runs scapy (scapy's state is global per process).
"""

"""Pure text formats shared by the proxy modes (writers) and `kplab.inspect` (readers).

    iptables_save   `iptables-save` output as data (tables, chains, rules, counters)
    nft_text        `nft list` listings and `nft -f` transactions as one Ruleset
    naming          upstream's hashed chain names (the base32 alphabet, once)
    ipv4            IPv4 read leniently, as upstream's ParseIPSloppy (once)
    ipset           `ipset save` read back, and the `ipset restore` batch that reaches a wanted state

No I/O and no imports from the rest of kplab but `kplab.errors`: the layer below proxy and inspect.
"""

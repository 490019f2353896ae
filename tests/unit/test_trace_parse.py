"""Parsing the kernel's trace output into hops and a path (no root: samples as this kernel prints them)."""

from __future__ import annotations

from kplab.inspect.trace_parse import decision, packet_summary, parse_nft, parse_xtables

XT = """\
PACKET: 2 c186ad70 IN=cni0 MACSRC=56:6c:5e:ab:3d:14 MACDST=a:39:f0:dc:b9:52 MACPROTO=0800 SRC=10.244.1.3 DST=10.96.216.130 LEN=60 TOS=0x0 TTL=64 ID=39877 DF SPORT=45555 DPORT=80 SYN
 TRACE: 2 c186ad70 raw:PREROUTING:rule:0x2:CONTINUE  -4 -t raw -A PREROUTING -s 10.244.1.3/32 -p tcp -m tcp --sport 45555 -m comment --comment "kplab-trace 1" -j TRACE
 TRACE: 2 c186ad70 raw:PREROUTING:policy:ACCEPT
PACKET: 2 c186ad70 IN=cni0 MACSRC=56:6c:5e:ab:3d:14 MACDST=a:39:f0:dc:b9:52 MACPROTO=0800 SRC=10.244.1.3 DST=10.96.216.130 LEN=60 TOS=0x0 TTL=64 ID=39877 DF SPORT=45555 DPORT=80 SYN
 TRACE: 2 c186ad70 nat:PREROUTING:rule:0x36:JUMP:KUBE-SERVICES  -4 -t nat -A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
 TRACE: 2 c186ad70 nat:KUBE-SERVICES:rule:0x23:JUMP:KUBE-SVC-CDGGSHYLG3RE2FKL  -4 -t nat -A KUBE-SERVICES -d 10.96.216.130/32 -p tcp -m comment --comment "default/web:http cluster IP" -m tcp --dport 80 -j KUBE-SVC-CDGGSHYLG3RE2FKL
 TRACE: 2 c186ad70 nat:KUBE-SVC-CDGGSHYLG3RE2FKL:rule:0x2b:JUMP:KUBE-SEP-VQGOCFX4X6FWJPNR  -4 -t nat -A KUBE-SVC-CDGGSHYLG3RE2FKL -m comment --comment "default/web:http -> 10.244.2.3:8080" -j KUBE-SEP-VQGOCFX4X6FWJPNR
 TRACE: 2 c186ad70 nat:KUBE-SEP-VQGOCFX4X6FWJPNR:rule:0x31:ACCEPT  -4 -t nat -A KUBE-SEP-VQGOCFX4X6FWJPNR -p tcp -m comment --comment "default/web:http" -m tcp -j DNAT --to-destination 10.244.2.3:8080
PACKET: 2 389ad567 IN=cni0 OUT=eth0 MACSRC=56:6c:5e:ab:3d:14 MACDST=a:39:f0:dc:b9:52 MACPROTO=0800 SRC=10.244.1.3 DST=10.244.2.3 LEN=60 TOS=0x0 TTL=63 ID=39877 DF SPORT=45555 DPORT=8080 SYN
 TRACE: 2 389ad567 filter:FORWARD:rule:0x14:JUMP:KUBE-FORWARD  -4 -t filter -A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD
 TRACE: 2 389ad567 filter:FORWARD:policy:ACCEPT
PACKET: 2 389ad567 IN=cni0 OUT=eth0 MACSRC=56:6c:5e:ab:3d:14 MACDST=a:39:f0:dc:b9:52 MACPROTO=0800 SRC=10.244.1.3 DST=10.244.2.3 LEN=60 TOS=0x0 TTL=63 ID=39877 DF SPORT=45555 DPORT=8080 SYN
 TRACE: 2 389ad567 nat:POSTROUTING:rule:0x38:JUMP:KUBE-POSTROUTING  -4 -t nat -A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
 TRACE: 2 389ad567 nat:KUBE-POSTROUTING:rule:0x10:0xfffffffb  -4 -t nat -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
""".splitlines()

NFT = """\
trace id 0e4059ac ip kplab-trace-abc pre packet: iif "cni0" ether saddr 56:6c:5e:ab:3d:14 ip saddr 10.244.1.3 ip daddr 10.96.216.130 tcp sport 45556 tcp dport 80 tcp flags == syn tcp window 64240
trace id 0e4059ac ip kplab-trace-abc pre unknown rule handle 2 (verdict continue)
trace id 0e4059ac ip kube-proxy nat-prerouting packet: iif "cni0" ether saddr 56:6c:5e:ab:3d:14 ip saddr 10.244.1.3 ip daddr 10.96.216.130 tcp sport 45556 tcp dport 80 tcp flags == syn tcp window 64240
trace id 0e4059ac ip kube-proxy nat-prerouting rule counter packets 3 bytes 180 jump services (verdict jump services)
trace id 0e4059ac ip kube-proxy services rule counter packets 3 bytes 180 ip daddr . meta l4proto . th dport vmap @service-ips (verdict goto service-SUSTUHLJ-default/web/tcp/http)
trace id 0e4059ac ip kube-proxy service-SUSTUHLJ-default/web/tcp/http rule counter packets 3 bytes 180 numgen random mod 3 vmap { 0 : goto endpoint-SVLGPL42-default/web/tcp/http__10.244.1.2/8080, 1 : goto endpoint-AAOQDDFY-default/web/tcp/http__10.244.2.2/8080, 2 : goto endpoint-AHN7CUJY-default/web/tcp/http__10.244.2.3/8080 } (verdict goto endpoint-AAOQDDFY-default/web/tcp/http__10.244.2.2/8080)
trace id 0e4059ac ip kube-proxy endpoint-AAOQDDFY-default/web/tcp/http__10.244.2.2/8080 rule meta l4proto tcp counter packets 3 bytes 180 dnat to 10.244.2.2:8080 (verdict accept)
trace id 27195341 ip kube-proxy filter-forward packet: iif "cni0" oif "eth0" ip saddr 10.244.1.3 ip daddr 10.244.2.2 tcp sport 45556 tcp dport 8080 tcp flags == syn tcp window 64240
trace id 27195341 ip kube-proxy filter-forward rule ct state new counter packets 3 bytes 180 jump service-endpoints-check (verdict jump service-endpoints-check)
trace id 27195341 ip kube-proxy filter-forward policy accept
""".splitlines()


def test_xtables_trace_becomes_hops_and_a_path():
    hops = parse_xtables(XT, "node-1")
    assert [(h.table, h.chain, h.verdict, h.target) for h in hops[:3]] == [
        ("raw", "PREROUTING", "CONTINUE", ""),
        ("raw", "PREROUTING", "policy ACCEPT", ""),
        ("nat", "PREROUTING", "JUMP", "KUBE-SERVICES"),
    ]
    assert hops[-1].verdict == "RETURN"  # 0xfffffffb is nft's RETURN verdict
    assert {h.visit for h in hops} == {0, 1, 2, 3}
    labels = {"KUBE-SVC-CDGGSHYLG3RE2FKL": "default/web:http", "KUBE-SEP-VQGOCFX4X6FWJPNR": "10.244.2.3:8080"}
    path, nat, node = decision(hops, labels)
    assert path == [
        "KUBE-SERVICES",
        "KUBE-SVC-CDGGSHYLG3RE2FKL (default/web:http)",
        "KUBE-SEP-VQGOCFX4X6FWJPNR (10.244.2.3:8080)",
        "DNAT 10.244.2.3:8080",
    ]
    assert (nat, node) == ("DNAT 10.244.2.3:8080", "node-1")
    assert packet_summary(hops[0].packet) == "cni0 10.244.1.3:45555 > 10.96.216.130:80 SYN"


def test_nft_trace_becomes_hops_and_a_path_without_the_tracers_own_table():
    hops = parse_nft(NFT, "node-1", skip_table="kplab-trace-abc")
    assert all("kplab-trace" not in h.table for h in hops)
    assert hops[0].chain == "nat-prerouting" and hops[0].rule == "jump services"  # counters dropped
    path, nat, _ = decision(hops)
    assert nat == "DNAT 10.244.2.2:8080"
    assert path == [
        "services",
        "service-SUSTUHLJ-default/web/tcp/http",
        "endpoint-AAOQDDFY-default/web/tcp/http__10.244.2.2/8080",
        "DNAT 10.244.2.2:8080",
    ]
    assert hops[-1].verdict == "policy ACCEPT"
    assert packet_summary(hops[-1].packet) == "cni0->eth0 10.244.1.3:45556 > 10.244.2.2:8080 syn"


def test_a_reject_ends_the_path():
    lines = [
        "PACKET: 2 aa IN=cni0 OUT=eth0 SRC=10.244.1.3 DST=10.96.0.40 SPORT=1 DPORT=443 SYN",
        " TRACE: 2 aa filter:FORWARD:rule:0x11:JUMP:KUBE-SERVICES  -4 -t filter -A FORWARD -j KUBE-SERVICES",
        (
            " TRACE: 2 aa filter:KUBE-SERVICES:rule:0x5:DROP  -4 -t filter -A KUBE-SERVICES -d 10.96.0.40/32 -p tcp "
            '-m comment --comment "shop/empty:api has no endpoints" -m tcp --dport 443 -j REJECT'
        ),
    ]
    path, nat, _ = decision(parse_xtables(lines, "node-1"))
    assert nat == "" and path == ["KUBE-SERVICES", "REJECT in KUBE-SERVICES (shop/empty:api)"]


def test_the_kernels_drop_verdict_of_a_reject_rule_reads_reject():
    """08 case 6 printed 'DROP in cluster-ips-check' while the client saw 'refused': the kernel's
    trace gives a reject statement the verdict drop (it answers, then drops the packet)."""
    lines = [
        ("trace id 1a ip kube-proxy filter-forward packet: iif \"cni0\" oif \"eth0\" ip saddr 10.244.1.2 "
        "ip daddr 10.96.0.40 tcp dport 80 tcp flags == syn"),
        "trace id 1a ip kube-proxy filter-forward rule ct state new jump cluster-ips-check (verdict jump cluster-ips-check)",
        ('trace id 1a ip kube-proxy cluster-ips-check rule ip daddr @cluster-ips reject comment "Reject traffic to '
        'invalid ports of ClusterIPs" (verdict drop)'),
        ('trace id 1b ip kube-proxy filter-forward rule ip daddr 10.0.0.9 counter packets 1 bytes 60 drop '
        'comment "a reject in a comment is not a reject" (verdict drop)'),
    ]
    hops = parse_nft(lines, "node-1")
    assert [h.verdict for h in hops] == ["JUMP", "REJECT", "DROP"]
    path, _, _ = decision(hops)
    assert path == ["cluster-ips-check", "REJECT in cluster-ips-check"]
    xt = (" TRACE: 2 aa filter:KUBE-EXTERNAL-SERVICES:rule:0x7:DROP  -4 -t filter -A KUBE-EXTERNAL-SERVICES "
          '-m comment --comment "-j REJECT is not this rule\'s target" -j DROP')
    assert parse_xtables([xt])[0].verdict == "DROP"


def test_a_path_without_a_deciding_node_reads_path_not_path_on_nothing():
    """The IPVS trace recorded in the VM printed 'path on :' (its DNAT is in IPVS, not in a traced rule)."""
    from kplab.inspect.trace import Trace

    t = Trace("ipvs", "client", "web", "tcp", "10.244.1.3:23456", "10.96.0.20:80",
              path=["IPVS virtual server 10.96.0.20:80", "real server 10.244.2.3:8080"])
    assert "path on :" not in t.text() and "\npath:\n" in t.text()
    t.decided_on = "node-1"
    assert "path on node-1:" in t.text()


CASE7 = [  # 08 case 7, as xtables-monitor printed it: INPUT jumps to chains that return, then the DROP
    "PACKET: 2 aa IN=eth0 OUT= SRC=172.18.0.100 DST=172.18.0.12 SPORT=29469 DPORT=30090 SYN",
    " TRACE: 2 aa filter:INPUT:rule:0x2:JUMP:KUBE-FIREWALL  -4 -t filter -A INPUT -j KUBE-FIREWALL",
    " TRACE: 2 aa filter:INPUT:rule:0x3:JUMP:KUBE-PROXY-FIREWALL  -4 -t filter -A INPUT -j KUBE-PROXY-FIREWALL",
    " TRACE: 2 aa filter:INPUT:rule:0x4:JUMP:KUBE-NODEPORTS  -4 -t filter -A INPUT -j KUBE-NODEPORTS",
    " TRACE: 2 aa filter:INPUT:rule:0x5:JUMP:KUBE-EXTERNAL-SERVICES  -4 -t filter -A INPUT -j KUBE-EXTERNAL-SERVICES",
    (' TRACE: 2 aa filter:KUBE-EXTERNAL-SERVICES:rule:0x9:DROP  -4 -t filter -A KUBE-EXTERNAL-SERVICES -p tcp '
     '-m comment --comment "default/solo:http has no local endpoints" -m tcp --dport 30090 -j DROP'),
]


def test_the_path_leaves_out_chains_the_packet_returned_from():
    """08 case 7's path read 'KUBE-FIREWALL -> KUBE-PROXY-FIREWALL -> KUBE-NODEPORTS -> ...': chains
    INPUT jumped to and came back from are not where the packet was dropped."""
    path, _, _ = decision(parse_xtables(CASE7, "node-2"))
    assert path == ["KUBE-EXTERNAL-SERVICES", "DROP in KUBE-EXTERNAL-SERVICES (default/solo:http)"]


def test_a_retransmitted_packet_is_shown_once_and_counted():
    """08 case 7's trace listed the same SYN's rules three times over (two retransmissions)."""
    from kplab.inspect.trace import Trace

    lines = CASE7 + [line.replace(" 2 aa ", " 3 bb ") for line in CASE7] + [
        line.replace(" 2 aa ", " 4 cc ") for line in CASE7]
    hops = parse_xtables(lines, "node-2")
    t = Trace("iptables", "outside", "node-2:solo", "tcp", "172.18.0.100:29469", "172.18.0.12:30090", hops=hops)
    text = t.text()
    assert text.count("filter:INPUT  JUMP KUBE-FIREWALL") == 1
    assert "the same again, 2 more times: the client sent this packet 3 times" in text
    t.hops = hops[: len(hops) // 3 * 2] + hops[:2]  # not a clean repetition: every hop is shown
    assert t.text().count("filter:INPUT  JUMP KUBE-FIREWALL") == 3

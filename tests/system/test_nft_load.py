"""A sync's nft script where the kernel refuses one netlink message that large (issue 17).

In a learner's container the lab runs as root of a user namespace: nft cannot force its socket's
send buffer past net.core.wmem_max there, and `kplab apply` of 10,000 Services failed with
"nft -f - ... Message too long".  Here the same user namespace, without Docker: `unshare --user
--map-root-user --net`, a real kernel and a script far over the limit.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.root]

CHAINS = 6000


def script() -> str:
    lines = ["add table ip t", "add chain ip t marker"]
    for i in range(CHAINS):
        lines += [f"add chain ip t c{i}", f"add rule ip t c{i} ip saddr 10.{i // 256}.{i % 256}.1 counter jump marker",
                  f"add rule ip t c{i} ip daddr 10.{i // 256}.{i % 256}.2 counter accept"]
    return "\n".join(lines) + "\n"


def in_user_namespace(code: str) -> dict:
    cp = subprocess.run(["unshare", "--user", "--map-root-user", "--net", sys.executable, "-c", code],
                        input=script(), capture_output=True, text=True, timeout=600, check=False)
    assert cp.returncode == 0, cp.stderr
    return json.loads(cp.stdout.splitlines()[-1])


def test_a_script_too_large_for_one_message_goes_in_several_transactions_all_of_it():
    out = in_user_namespace(
        "import json, subprocess, sys\n"
        "from kplab.proxy.nftables.load import load\n"
        "text = sys.stdin.read()\n"
        "one = subprocess.run(['nft', '-f', '-'], input=text, capture_output=True, text=True)\n"
        "n = load(None, text)\n"
        "chains = subprocess.run(['nft', 'list', 'table', 'ip', 't'], capture_output=True, text=True).stdout\n"
        "print(json.dumps({'one': one.stderr, 'n': n, 'chains': chains.count('chain ')}))\n")
    assert "Message too long" in out["one"], "the kernel took it in one message: this test proves nothing here"
    assert out["n"] > 1 and out["chains"] == CHAINS + 1, out


def test_a_script_that_fits_is_one_transaction_as_upstream():
    out = in_user_namespace(
        "import json, sys\n"
        "from kplab.proxy.nftables.load import load\n"
        "sys.stdin.read()\n"
        "print(json.dumps({'n': load(None, 'add table ip t\\nadd chain ip t c\\n')}))\n")
    assert out["n"] == 1


def iptables_script() -> str:
    chains = [f":KUBE-SVC-{i:012d} - [0:0]" for i in range(CHAINS)]
    rules = [f"-A KUBE-SVC-{i:012d} -s 10.{i // 256}.{i % 256}.1/32 -j MASQUERADE" for i in range(CHAINS)]
    return "\n".join(["*nat", *chains, *rules, "COMMIT"]) + "\n"


def test_iptables_nft_refusing_the_same_says_to_use_the_legacy_backend():
    """iptables-nft has the same one-message limit in a user namespace ("line 12001 failed: Message
    too long"); the legacy backend has none, and the error says to switch to it."""
    cp = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--net", sys.executable, "-c",
         ("import json, sys\n"
         "from kplab.errors import ProxierError\n"
         "from kplab.proxy.xtables import Xtables\n"
         "text, out = sys.stdin.read(), {}\n"
         "try:\n"
         "    Xtables(None, 'nf_tables').restore(text)\n"
         "    out['nft'] = 'loaded'\n"
         "except ProxierError as e:\n"
         "    out['nft'] = str(e)\n"
         "legacy = Xtables(None, 'legacy')\n"
         "legacy.restore(text)\n"
         "out['legacy'] = legacy.save().count('-A KUBE-SVC-')\n"
         "print(json.dumps(out))\n")],
        input=iptables_script(), capture_output=True, text=True, timeout=600, check=False)
    assert cp.returncode == 0, cp.stderr
    out = json.loads(cp.stdout.splitlines()[-1])
    assert "Message too long" in out["nft"] and "--set iptables_backend=legacy" in out["nft"], out
    assert "\n" not in out["nft"] and out["legacy"] == CHAINS

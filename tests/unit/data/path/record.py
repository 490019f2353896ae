"""Record what tests/unit/test_path_picture.py renders: per mode, one live trace and the ruleset.

    /work/tools/isolate .venv/bin/python tests/unit/data/path/record.py OUT.json iptables nftables userspace
    .venv/bin/python -m kplab.testing.vm --collect DIR -- tests/unit/data/path/record.py \
        {results}/path-ipvs.json ipvs                    # IPVS, in the throwaway VM

For each mode: `lab.trace("client", "web").to_dict()` and `nft -j list ruleset` of the node
that made the NAT decision, both from a live lab.  Merge the outputs into recorded.json.
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[4]))

from kplab import Lab  # noqa: E402
from kplab.cluster.run import run  # noqa: E402

out, modes = sys.argv[1], sys.argv[2:]
recorded = {}
lab = Lab.up("rec", mode="iptables")
try:
    for mode in modes:
        if lab.mode != mode:
            lab.set_mode(mode)
        t = lab.trace("client", "web")
        node = t.decided_on or "node-1"
        ruleset = run(["nft", "-j", "list", "ruleset"], lab.netns(node), check=False).stdout
        ipvs = run(["ip", "link", "show", "kube-ipvs0"], lab.netns(node), check=False).ok
        recorded[mode] = {"node": node, "ruleset": ruleset, "ipvs": ipvs, "trace": t.to_dict()}
        print(t.text())
finally:
    lab.down()
Path(out).write_text(json.dumps(recorded, indent=0))

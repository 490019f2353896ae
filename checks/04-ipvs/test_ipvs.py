"""04 · IPVS: virtual and real servers read back with ipvsadm; skipped where the kernel has no IPVS."""

import pytest

from kplab.proxy.base import proxier_class


@pytest.fixture(autouse=True)
def needs_ipvs():
    found = proxier_class("ipvs").doctor()
    if not found.available:
        pytest.skip(f"no IPVS here ({found.detail}); notebook 04 explains how to get it")


def web_virtual_server(lab, ns) -> list[str]:
    """The `ipvsadm -Ln` lines of web's ClusterIP:80 virtual server and its real servers."""
    text = ns("node-1").run("ipvsadm -Ln").stdout.splitlines()
    head = f"TCP  {lab.service_ip('web')}:80"
    for i, line in enumerate(text):
        if line.startswith(head):
            out = [line]
            for ln in text[i + 1:]:
                if not ln.strip().startswith("->"):
                    break
                out.append(ln)
            return out
    return []


def test_virtual_servers(lab, ns):
    """node-1 has an IPVS virtual server for web's ClusterIP:80 with one real server per endpoint.

    Hint: switch the lab to IPVS mode (`lab.set_mode("ipvs")`), then `ipvsadm -Ln` on node-1.
    """
    assert lab.mode == "ipvs", f"the lab runs {lab.mode}, not ipvs"
    lines = web_virtual_server(lab, ns)
    assert lines, "no IPVS virtual server for web's ClusterIP:80 on node-1"
    assert len([ln for ln in lines[1:] if ":8080" in ln]) >= 3, f"too few real servers: {lines}"
    assert lab.curl("client", "web:80", n=10, timeout=1.0).ok == 10, "web:80 does not answer from client"


def test_scheduler_lc(lab, ns):
    """web's virtual server on node-1 uses the least-connection scheduler (lc).

    Hint: the scheduler is a kube-proxy option: `lab.set_mode("ipvs", scheduler="lc")`.
    """
    lines = web_virtual_server(lab, ns)
    assert lines and " lc" in lines[0], f"web's virtual server is {lines[0] if lines else 'missing'}"

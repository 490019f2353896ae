"""04 · IPVS on any kernel: answers held against what IPVS mode would program for the live lab.

No IPVS needed: kube-proxy's IPVS render of node-1, from the lab's Services and EndpointSlices
as they are now, is the evidence (the same code programs the kernel where IPVS exists).
"""

from kplab.course.answers import answer_of
from kplab.proxy.base import proxier_class


def test_web_virtual_servers(lab):
    """Your count of node-1's IPVS virtual servers for Service `web` is what IPVS mode renders for it.

    Hint: one virtual server per ClusterIP:port, and one per NodePort on each node address kube-proxy
    uses (read the `-A` lines); answer("04-ipvs/web-virtual-servers", n).
    """
    value = answer_of(lab, "04-ipvs/web-virtual-servers")["value"]
    try:
        predicted = int(str(value).strip())
    except ValueError:
        raise AssertionError(f"{value!r} is not a number of virtual servers") from None
    rendered = proxier_class("ipvs").preview(lab.state("node-1"))
    web = [s for s in lab.services() if s.metadata.name == "web"]
    assert web, "the lab has no Service web"
    vips = {f"{lab.service_ip('web')}:{p.port}" for p in web[0].spec.ports}
    nodeports = {str(p.node_port) for p in web[0].spec.ports if p.node_port}
    servers = [ln.split()[2] for ln in rendered.splitlines() if ln.split()[:2] in (["-A", "-t"], ["-A", "-u"])]
    count = sum(1 for s in servers if s in vips or s.rsplit(":", 1)[1] in nodeports)
    assert predicted == count, f"you counted {predicted}; IPVS mode gives node-1 {count} virtual servers for web"

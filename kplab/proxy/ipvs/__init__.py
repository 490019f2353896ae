"""kube-proxy's IPVS mode: proxier (sync), rules (the pure plan and its text), kernel (IPVS over netlink)."""

from kplab.proxy.ipvs.proxier import IpvsProxier

__all__ = ["IpvsProxier"]

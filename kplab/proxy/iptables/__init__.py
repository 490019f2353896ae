"""kube-proxy's iptables mode: proxier (sync, read back), rules (the pure render), view (annotated read-back)."""

from kplab.proxy.iptables.proxier import IptablesProxier

__all__ = ["IptablesProxier"]

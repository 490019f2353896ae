"""kube-proxy's nftables mode: proxier (plan, sync, memory), rules (the pure render), view (read back)."""

from kplab.proxy.nftables.proxier import NftablesProxier

__all__ = ["NftablesProxier"]

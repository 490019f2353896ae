"""kube-proxy's historical userspace mode: proxier (rules and table), proxy (the process), relay (its sockets).

proxy.py also runs as a plain file (no package import), so nothing here may be needed by it.
"""

from kplab.proxy.userspace.proxier import UserspaceProxier

__all__ = ["UserspaceProxier"]

"""kplab: see, for real, how kube-proxy turns Kubernetes Services into kernel state.

    from kplab import Lab
    lab = Lab.up("default", mode="iptables")   # nodes, pods and a client in network namespaces
    lab.curl("client", "web", n=30).backends   # which pods answered
    lab.rules("node-1")["text"]                # what the mode programmed, read back
    lab.down()
"""

from kplab.errors import (
    CheckError,
    EnvironmentProblem,
    KplabError,
    LabError,
    ManifestError,
    ProxierError,
)
from kplab.lab import CurlResult, Lab, clean

__version__ = "0.1.0"

__all__ = [
    "CheckError",
    "CurlResult",
    "EnvironmentProblem",
    "KplabError",
    "Lab",
    "LabError",
    "ManifestError",
    "ProxierError",
    "__version__",
    "clean",
]

"""kplab: see, for real, how kube-proxy turns Kubernetes Services into kernel state.

    from kplab import Lab
    lab = Lab.up("default", mode="iptables")   # nodes, pods and a client in network namespaces
    lab.curl("client", "web", n=30).backends   # which pods answered
    lab.rules("node-1")["text"]                # what the mode programmed, read back
    lab.down()
"""

import sys
import typing

from kplab.errors import (
    CheckError,
    CommandError,
    EnvironmentProblem,
    KplabError,
    KplabWarning,
    LabError,
    ManifestError,
    ProxierError,
)

if typing.TYPE_CHECKING:
    from kplab.lab import CurlResult, Lab, clean

__version__ = "0.1.0"
_LAZY = ("CurlResult", "Lab", "clean")  # from kplab.lab, imported on first use: `python -m kplab.cluster.echo`
# and other helper processes then start without loading the kubernetes client (seconds under emulation)

__all__ = [
    "CheckError",
    "CommandError",
    "CurlResult",
    "EnvironmentProblem",
    "KplabError",
    "KplabWarning",
    "Lab",
    "LabError",
    "ManifestError",
    "ProxierError",
    "__version__",
    "clean",
]


if "IPython" in sys.modules:  # in a notebook: one-line errors, the CLI's warnings, resume() (kplab.notebook)
    from kplab import notebook as _notebook  # noqa: F401


def __getattr__(name: str) -> typing.Any:
    if name in _LAZY:
        from kplab import lab

        return getattr(lab, name)
    raise AttributeError(f"module 'kplab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])

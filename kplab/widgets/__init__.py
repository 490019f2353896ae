"""ipywidgets views of a live lab, used by the notebooks in `labs/`.

    from kplab.widgets import ModeSwitcher, ReplicasSlider, Traffic, RulesViewer, topology
    Traffic(lab, "client", "web")        # a button, and a live histogram of backends
    path_picture(lab, lab.trace("client", "web"))   # the node's hooks, this connection's hops lit

Anything slow (switching mode, scaling, sending requests) runs in a background thread so the
kernel stays responsive; reading rules and drawing the topology are quick and run inline.
"""

from __future__ import annotations

from kplab.widgets.controls import ModeSwitcher, ReplicasSlider
from kplab.widgets.path import PathPicture, path_picture
from kplab.widgets.rules import RulesViewer, highlight_moved
from kplab.widgets.topology import topology, topology_svg
from kplab.widgets.traffic import Traffic

__all__ = ["ModeSwitcher", "PathPicture", "ReplicasSlider", "RulesViewer", "Traffic", "highlight_moved",
           "path_picture", "topology", "topology_svg"]

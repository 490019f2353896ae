"""kube-proxy's modes: a shared core (core.py, naming.py, base.py) and one module per mode."""

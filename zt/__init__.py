"""zt: a node proxy for sidecar-less service meshes (the role of Istio ambient's ztunnel)."""

__version__ = "0.1.0"

"""zt: a node proxy for sidecar-less service meshes (the role of Istio ambient's ztunnel)."""

# The one place the version is written: pyproject.toml reads it (dynamic version) for the sdist
# and wheel, `zt --version` prints it, and istio_build{tag} reports it.
__version__ = "0.1.0"

"""The local lab: nodes and pods as network namespaces on one machine."""

from tests.netns.fixtures import connect_pod, kernel_release, pod, sklookup_pod, topo

__all__ = ["connect_pod", "kernel_release", "pod", "sklookup_pod", "topo"]

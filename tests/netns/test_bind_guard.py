"""bind4/bind6 guard (docs/design.md §6): only marked sockets may bind 15001/15006/15008 in enrolled
pods; everywhere else binding them is ordinary."""

from __future__ import annotations

import socket

import pytest

from tests.netns.fixtures import Pod
from zt.capture.netns import marked_socket, run_in_netns

pytestmark = pytest.mark.root


def _bind(netns: str, family: int, host: str, port: int, *, marked: bool = False) -> None:
    def go() -> None:
        sock = marked_socket(family) if marked else socket.socket(family, socket.SOCK_STREAM)
        with sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))

    run_in_netns(netns, go)


@pytest.mark.parametrize("port", [15001, 15006, 15008])
@pytest.mark.parametrize(
    ("family", "host"), [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")]
)
def test_app_bind_of_zt_port_refused_in_enrolled_pod(
    pod: Pod, port: int, family: int, host: str
) -> None:
    with pytest.raises(PermissionError):
        _bind(pod.topo.pod, family, host, port)
    # the guard covers zt's three ports only
    _bind(pod.topo.pod, family, host, port + 100)
    assert pod.capture.counters()["bind_denied"] == 1


def test_bind_allowed_elsewhere(pod: Pod) -> None:
    """A netns that is not enrolled (the peer) binds 15001 as usual; so does the pod once
    unenrolled."""
    _bind(pod.topo.peer, socket.AF_INET, "0.0.0.0", 15001)
    _bind(pod.topo.peer, socket.AF_INET6, "::", 15001)
    pod.close_listeners()
    pod.capture.unenroll(pod.spec.name)
    _bind(pod.topo.pod, socket.AF_INET, "0.0.0.0", 15001)
    assert pod.capture.counters()["bind_denied"] == 0


def test_marked_bind_allowed_in_enrolled_pod(connect_pod: Pod) -> None:
    """zt's listeners are marked; a marked socket binding a zt port is not denied by the guard
    (it fails with EADDRINUSE only because zt's listener holds the port)."""
    pod = connect_pod
    with pytest.raises(OSError) as err:
        _bind(pod.topo.pod, socket.AF_INET6, "::", 15001, marked=True)
    assert err.value.errno == 98  # EADDRINUSE, not EPERM
    assert pod.capture.counters()["bind_denied"] == 0

"""scapy sniffing inside a netns (docs/design.md §7: AsyncSniffer started from a thread that is inside
the netns, promisc=False). The sniffer's own thread inherits the netns of the thread that made it."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from scapy.layers.inet import TCP
from scapy.sendrecv import AsyncSniffer

from zt.capture.netns import run_in_netns


@contextmanager
def sniffing(
    netns: str, iface: str, keep: Callable[[Any], bool] = lambda p: p.haslayer(TCP)
) -> Iterator[list[Any]]:
    """Collect the packets `keep` accepts (TCP by default) seen on iface in netns; the list fills
    when the block exits."""
    started = threading.Event()
    packets: list[Any] = []

    def start() -> AsyncSniffer:
        sniffer = AsyncSniffer(
            iface=iface,
            promisc=False,
            store=True,
            lfilter=keep,
            started_callback=started.set,
        )
        sniffer.start()
        return sniffer

    sniffer = run_in_netns(netns, start)
    try:
        assert started.wait(5), f"sniffer on {netns}/{iface} did not start"
        yield packets
    finally:
        sniffer.stop(join=True)
        packets.extend(sniffer.results or [])


def unique(packets: list[Any]) -> list[Any]:
    """A packet on `lo` is seen twice by a packet socket (outgoing, then incoming): keep one."""
    seen: set[tuple[Any, ...]] = set()
    out = []
    for p in packets:
        key = (p[TCP].sport, p[TCP].dport, p[TCP].seq, p[TCP].ack, int(p[TCP].flags))
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def syns(packets: list[Any]) -> list[Any]:
    return [p for p in unique(packets) if p[TCP].flags & 0x02 and not p[TCP].flags & 0x10]


def resets(packets: list[Any]) -> list[Any]:
    return [p for p in unique(packets) if p[TCP].flags & 0x04]

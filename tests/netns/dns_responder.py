"""A tiny DNS responder standing in for zt's DNS proxy in capture tests: it serves the sockets of
zt.capture.netns.open_dns_sockets (UDP and TCP on 127.0.0.1:15053 and [::1]:15053 in a pod netns)
and answers every A query with ANSWER_A and every AAAA query with ANSWER_AAAA, in hand-made bytes
(RFC 1035 4.1), so the capture tests depend on no DNS library. It records what it was asked."""

from __future__ import annotations

import contextlib
import selectors
import socket
import struct
import threading
from dataclasses import dataclass

ANSWER_A = "10.53.53.53"
ANSWER_AAAA = "fd00:53::53"
_TYPE_A = 1
_TYPE_AAAA = 28


@dataclass(frozen=True)
class Query:
    transport: str  # "udp" or "tcp"
    client: tuple[str, int]  # the source the proxy sees: loopback and the app's port
    name: str
    qtype: int


def parse_question(msg: bytes) -> tuple[str, int, int]:
    """(qname, qtype, offset after the question) of a query: RFC 1035 4.1.2, no compression."""
    labels: list[str] = []
    at = 12
    while msg[at]:
        size = msg[at]
        labels.append(msg[at + 1 : at + 1 + size].decode("ascii"))
        at += 1 + size
    qtype, _qclass = struct.unpack_from("!HH", msg, at + 1)
    return ".".join(labels), qtype, at + 5


def answer(query: bytes) -> bytes:
    """RFC 1035 4.1.1: QR, AA, RA, the query's id and RD; one answer for A/AAAA, else none."""
    name, qtype, end = parse_question(query)
    del name
    (flags,) = struct.unpack_from("!H", query, 2)
    rdata = {
        _TYPE_A: socket.inet_pton(socket.AF_INET, ANSWER_A),
        _TYPE_AAAA: socket.inet_pton(socket.AF_INET6, ANSWER_AAAA),
    }.get(qtype)
    header = query[:2] + struct.pack(
        "!HHHHH", 0x8000 | 0x0400 | 0x0080 | (flags & 0x0100), 1, 1 if rdata else 0, 0, 0
    )
    out = header + query[12:end]
    if rdata:  # the name is a pointer to the question's (offset 12: 0xc00c)
        out += b"\xc0\x0c" + struct.pack("!HHIH", qtype, 1, 60, len(rdata)) + rdata
    return out


class Responder:
    """Serves the given sockets from one thread until close(); every wait is bounded."""

    def __init__(self, socks: list[socket.socket]) -> None:
        self.socks = socks
        self.queries: list[Query] = []
        self._stop = threading.Event()
        self._sel = selectors.DefaultSelector()
        for sock in socks:
            sock.setblocking(False)
            self._sel.register(sock, selectors.EVENT_READ)
        self._thread = threading.Thread(target=self._run, name="dns-responder", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._sel.select(timeout=0.1):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                with contextlib.suppress(OSError, ValueError, IndexError, struct.error):
                    if sock.type == socket.SOCK_DGRAM:
                        self._udp(sock)
                    else:
                        self._tcp(sock)

    def _record(self, transport: str, client: tuple[str, int], msg: bytes) -> None:
        name, qtype, _ = parse_question(msg)
        self.queries.append(Query(transport, (client[0], client[1]), name, qtype))

    def _udp(self, sock: socket.socket) -> None:
        msg, client = sock.recvfrom(4096)
        self._record("udp", client, msg)
        sock.sendto(answer(msg), client)

    def _tcp(self, listener: socket.socket) -> None:
        """RFC 7766 8: two-byte length, then the message; queries until the client closes."""
        conn, client = listener.accept()
        with conn:
            conn.settimeout(2)
            for _ in range(16):
                head = conn.recv(2, socket.MSG_WAITALL)
                if len(head) < 2:
                    return
                msg = conn.recv(struct.unpack("!H", head)[0], socket.MSG_WAITALL)
                self._record("tcp", client, msg)
                reply = answer(msg)
                conn.sendall(struct.pack("!H", len(reply)) + reply)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sel.close()
        for sock in self.socks:
            sock.close()

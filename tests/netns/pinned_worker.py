"""A stand-in for the zt daemon, run as a subprocess by test_pinned.py: it opens a *pinned*
Capture, enrolls one pod with its own listeners, and obeys commands on stdin (one per line):
  accept-inbound   accept one connection on 15006, print its original destination
  exit-keep        exit leaving the pinned capture running (a crash/restart)
  exit-detach      close(detach=True): remove everything
Replies are JSON lines on stdout.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from zt.capture import Capture, ListenerSockets, PodCapture, parse_ips
from zt.capture.netns import open_listener


def main(argv: list[str]) -> int:
    pin_dir, netns, mode = Path(argv[0]), argv[1], argv[2]
    ips = parse_ips(argv[3:])
    started = time.monotonic()
    cap = Capture.open("connect" if mode == "connect" else "sklookup", pin_dir=pin_dir)
    opened = time.monotonic() - started
    listeners = ListenerSockets(
        open_listener(netns, 15001, transparent=mode == "sklookup"),
        open_listener(netns, 15006),
        open_listener(netns, 15008),
    )
    listeners.inbound_plain.settimeout(5)
    cookie = cap.enroll(PodCapture("pod-pinned", Path("/run/netns") / netns, ips, listeners))
    print(json.dumps({"ready": True, "cookie": cookie, "open_seconds": opened}), flush=True)
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "accept-inbound":
            conn, _ = listeners.inbound_plain.accept()
            orig = cap.original_destination(conn)
            conn.close()
            print(json.dumps({"ip": str(orig.ip), "port": orig.port}), flush=True)
        elif cmd == "exit-keep":
            cap.close(detach=False)
            return 0
        elif cmd == "exit-detach":
            cap.close(detach=True)
            return 0
    cap.close(detach=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

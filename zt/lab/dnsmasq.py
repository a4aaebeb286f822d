"""A Debian dnsmasq: the real upstream of the lab's pods (zt/lab/dns.py), of the DNS tests and of
`zt bench dns`.

It answers from a hosts file (`--addn-hosts`, with `--local-ttl` so answers are cacheable), says
NXDOMAIN for unknown names of its `--local` domains, and logs every query (`--log-queries`) to a
file, so a test counts what reached it. Started with `start()`, stopped by PID with `stop()`.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from zt.errors import NotFoundError, ZtError

READY_TIMEOUT = 10.0


class DnsmasqError(ZtError):
    reason = "dnsmasq"


def dnsmasq_binary() -> str:
    found = shutil.which("dnsmasq") or shutil.which("dnsmasq", path="/usr/sbin:/sbin")
    if found is None:
        raise NotFoundError("dnsmasq: not installed; expected Debian's dnsmasq-base (make setup)")
    return found


def free_udp_port(address: str) -> int:
    """A port free for both UDP and TCP on `address` right now."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((address, 0))
            port: int = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((address, port))
                except OSError:
                    continue
                return port
    raise DnsmasqError(f"no free port on {address} after 50 tries")


class Dnsmasq:
    def __init__(
        self,
        workdir: Path,
        hosts: Mapping[str, Sequence[str]],
        *,
        address: str = "127.0.0.1",
        local_domains: Sequence[str] = ("example.org",),
        ttl: int = 300,
        log_queries: bool = True,
        extra: Sequence[str] = (),
    ) -> None:
        self.workdir = workdir
        self.address = address
        self.port = 0
        self.log = workdir / "dnsmasq.log"
        self._hosts = hosts
        self._local = local_domains
        self._ttl = ttl
        self._log_queries = log_queries  # off in benchmarks: a log line per query costs dnsmasq
        self._extra = extra
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Dnsmasq:
        self.workdir.mkdir(parents=True, exist_ok=True)
        hosts = self.workdir / "hosts"
        hosts.write_text(
            "".join(f"{ip} {name}\n" for name, ips in self._hosts.items() for ip in ips)
        )
        self.port = free_udp_port(self.address)
        argv = [
            dnsmasq_binary(),
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            f"--listen-address={self.address}",
            "--bind-interfaces",
            f"--port={self.port}",
            "--no-resolv",
            "--no-hosts",
            f"--addn-hosts={hosts}",
            f"--local-ttl={self._ttl}",
            *(f"--local=/{d}/" for d in self._local),
            *(["--log-queries"] if self._log_queries else []),
            f"--log-facility={self.log}",
            "--pid-file=",
            "--user=root",
            *self._extra,
        ]
        self._proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                err = self._proc.stderr.read().decode() if self._proc.stderr else ""
                raise DnsmasqError(f"dnsmasq exited with {self._proc.returncode}: {err.strip()}")
            if self.log.exists() and "read " in self.log.read_text():
                return
            time.sleep(0.05)
        raise DnsmasqError(f"dnsmasq: not ready after {READY_TIMEOUT} s")

    def queries(self, name: str | None = None) -> int:
        """How many queries reached it (for `name` only, if given)."""
        if not self.log.exists():
            return 0
        needle = f"] {name} from" if name else "query["
        return sum(
            1 for line in self.log.read_text().splitlines() if "query[" in line and needle in line
        )

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if proc.stderr is not None:
            proc.stderr.close()

    def __enter__(self) -> Dnsmasq:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

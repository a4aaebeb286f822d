"""The fleet signer with leaves of a few seconds, for the lab's root-rotation proof only.

`zt ca serve` refuses a leaf lifetime under an hour (a fleet must not renew every few seconds), and
a rotation retires the old root one leaf lifetime after the switch. To watch a whole rotation
(introduce, switch, retire) under traffic in seconds, the lab runs the same Signer with short
leaves from here, inside the control namespace, with the lab's root credentials:

    python -m zt.lab.shortsigner --ca-dir CA --etcd URLS --etcd-cacert PEM --etcd-password-file F \\
        --leaf-lifetime 8
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from pathlib import Path

from zt.fleet.connect import EtcdSettings
from zt.fleet.signer import Signer


async def _serve(settings: EtcdSettings, ca_dir: Path, leaf_lifetime: float) -> None:
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    async with settings.client() as client:
        await Signer(client, settings.prefix, ca_dir, leaf_lifetime=leaf_lifetime).run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zt.lab.shortsigner")
    parser.add_argument("--ca-dir", type=Path, required=True)
    parser.add_argument("--etcd", required=True)
    parser.add_argument("--etcd-cacert", type=Path, required=True)
    parser.add_argument("--etcd-user", default="root")
    parser.add_argument("--etcd-password-file", type=Path, required=True)
    parser.add_argument("--etcd-prefix", default="/zt")
    parser.add_argument("--leaf-lifetime", type=float, required=True, help="seconds")
    args = parser.parse_args(argv)
    settings = EtcdSettings.from_options(
        args.etcd,
        cacert=args.etcd_cacert,
        cert=None,
        key=None,
        user=args.etcd_user,
        password_file=args.etcd_password_file,
        prefix=args.etcd_prefix,
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.info("lab signer: leaves of %.0f s (lab and tests only)", args.leaf_lifetime)
    with contextlib.suppress(asyncio.CancelledError, KeyboardInterrupt):
        asyncio.run(_serve(settings, args.ca_dir, args.leaf_lifetime))
    return 0


if __name__ == "__main__":
    sys.exit(main())

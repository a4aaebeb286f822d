"""`vm.py` commands: plan, probe-accel, up, test, down, run (up+test+down), report, ssh."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from dataclasses import asdict
from pathlib import Path
from types import FrameType

from vmlab import qemu
from vmlab.errors import LabUsageError, VmLabError
from vmlab.plan import Image, plan_lab, qemu_argv
from vmlab.results import KernelResult, format_table, from_json, parse_junit, to_json
from vmlab.session import Paths, boot, load_lab, node_ssh, provision, run_tests, shutdown
from zt.errors import ZtError

HERE = Path(__file__).resolve().parents[1]
PROJECT = HERE.parent
DEFAULT_TIERS = "tests/netns tests/packets tests/node tests/ktls"


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, str(default))
    try:
        return int(raw)
    except ValueError:
        raise LabUsageError(f"{name}: got {raw!r}, expected an integer") from None


def cache_dir() -> Path:
    return Path(os.environ.get("ZT_VM_CACHE", HERE / ".cache"))


def choose_accel(paths: Paths) -> str:
    """ZT_VM_ACCEL=kvm|tcg forces; auto probes KVM once per machine and remembers the answer."""
    wanted = os.environ.get("ZT_VM_ACCEL", "auto")
    if wanted in ("kvm", "tcg"):
        return wanted
    if wanted != "auto":
        raise LabUsageError(f"ZT_VM_ACCEL: got {wanted!r}, expected auto, kvm or tcg")
    memo = paths.cache / "accel"
    if not memo.exists():
        paths.kver()
        works, why = qemu.probe_kvm(paths.image())
        memo.write_text(f"{'kvm' if works else 'tcg'} {why}\n")
    accel, _, why = memo.read_text().strip().partition(" ")
    print(f"vm: accel {accel} ({why}; cached in {memo})")
    return accel


def present_tiers(spec: str) -> tuple[str, ...]:
    """The tiers that exist in this checkout: the others' rooms land in parallel."""
    return tuple(t for t in spec.split() if (PROJECT / t).exists())


def cmd_plan(args: argparse.Namespace) -> int:
    paths = Paths(cache_dir(), args.kernel)
    ports = [int(p) for p in args.ports.split(",")]
    if len(ports) != 3:
        raise LabUsageError(f"--ports: got {args.ports!r}, expected SSH1,SSH2,LINK")
    lab = plan_lab(args.kernel, (ports[0], ports[1]), ports[2], pods=args.pods, accel=args.accel)
    image: Image = paths.image()
    run = paths.run
    out = {
        "lab": asdict(lab),
        "qemu": {
            n.name: qemu_argv(
                lab,
                n,
                image,
                overlay=run / f"{n.name}.qcow2",
                serial_log=run / f"{n.name}.serial",
                ssh_pubkey=args.pubkey,
            )
            for n in lab.nodes
        },
    }
    print(json.dumps(out, indent=2, default=str))
    return 0


def _knobs() -> dict[str, int]:
    return {
        "memory_mib": env_int("ZT_VM_MEMORY", 1536),
        "cpus": env_int("ZT_VM_CPUS", 1),
        "pods": env_int("ZT_VM_PODS", 2),
    }


def cmd_up(args: argparse.Namespace) -> int:
    paths = Paths(cache_dir(), args.kernel)
    shutdown(paths, load_lab(paths))  # leftovers of a crashed run first
    accel = choose_accel(paths)
    try:
        lab, boot_s = boot(
            paths, accel, **_knobs(), ssh_timeout_s=env_int("ZT_VM_SSH_TIMEOUT", 420)
        )
        provision(paths, lab, PROJECT)
    except BaseException:
        shutdown(paths, load_lab(paths))
        raise
    (paths.run / "boot.json").write_text(json.dumps(boot_s))
    for node in lab.nodes:
        print(
            f"vm[{args.kernel}]: ssh into {node.name}: {sys.argv[0]} ssh {args.kernel} {node.index}"
        )
    return 0


def cmd_test(args: argparse.Namespace) -> int:
    paths = Paths(cache_dir(), args.kernel)
    lab = load_lab(paths)
    if lab is None:
        raise VmLabError(f"KERNEL={args.kernel}: no lab is up (run `vm.py up {args.kernel}` first)")
    boot_s = tuple(json.loads((paths.run / "boot.json").read_text()))
    tiers = present_tiers(args.tiers)
    result = run_tests(
        paths, lab, tiers, boot_s=boot_s, started=time.monotonic(), timeout_s=args.timeout
    )
    return record(paths, result)


def record(paths: Paths, result: KernelResult) -> int:
    out = paths.cache / "results" / f"{paths.kernel}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(to_json(result))
    print(format_table([result]))
    return 0 if result.ok else 1


def cmd_run(args: argparse.Namespace) -> int:
    """up + test + down; the VMs are stopped by PID whatever happens (SIGTERM/SIGINT included)."""
    paths = Paths(cache_dir(), args.kernel)
    started = time.monotonic()
    shutdown(paths, load_lab(paths))
    (paths.cache / "results" / f"{args.kernel}.json").unlink(missing_ok=True)
    accel = choose_accel(paths)
    lab = None
    try:
        lab, boot_s = boot(
            paths, accel, **_knobs(), ssh_timeout_s=env_int("ZT_VM_SSH_TIMEOUT", 420)
        )
        provision(paths, lab, PROJECT)
        result = run_tests(
            paths,
            lab,
            present_tiers(args.tiers),
            boot_s=boot_s,
            started=started,
            timeout_s=args.timeout,
        )
    finally:
        shutdown(paths, lab or load_lab(paths))
    return record(paths, result)


def cmd_down(args: argparse.Namespace) -> int:
    paths = Paths(cache_dir(), args.kernel)
    shutdown(paths, load_lab(paths))
    print(f"vm[{args.kernel}]: down")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    results: list[KernelResult] = []
    missing = []
    for kernel in args.kernels:
        path = cache_dir() / "results" / f"{kernel}.json"
        if path.exists():
            results.append(from_json(path.read_text()))
        else:
            missing.append(kernel)
    print(format_table(results))
    for kernel in missing:
        print(f"  {kernel}: no result (the run did not finish; see vagrant/.cache/logs/{kernel}/)")
    return 0 if not missing and all(r.ok for r in results) else 1


def cmd_summarize(args: argparse.Namespace) -> int:
    """Summary of a pytest JUnit XML file as JSON (what `run` records per tier)."""
    summary = parse_junit(Path(args.junit).read_text())
    print(json.dumps({**asdict(summary), "ok": summary.ok}))
    return 0 if summary.ok else 1


def cmd_ssh(args: argparse.Namespace) -> int:
    paths = Paths(cache_dir(), args.kernel)
    lab = load_lab(paths)
    if lab is None or not 1 <= args.node <= len(lab.nodes):
        raise VmLabError(f"KERNEL={args.kernel}: no lab is up or no node {args.node}")
    ssh = node_ssh(paths, lab, lab.nodes[args.node - 1])
    argv = ssh.argv(" ".join(args.command)) if args.command else ssh.login_argv()
    os.execvp(argv[0], argv)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vm.py", description="zt's offline VM lab (QEMU, two nodes).")
    sub = p.add_subparsers(dest="command", required=True)
    plan = sub.add_parser("plan", help="print the lab layout and the QEMU command lines (no I/O)")
    plan.add_argument("kernel")
    plan.add_argument("--ports", default="10022,10023,10024", help="SSH1,SSH2,LINK")
    plan.add_argument("--pods", type=int, default=2)
    plan.add_argument("--accel", default="tcg")
    plan.add_argument("--pubkey", default="ssh-ed25519 AAAA zt-vm-lab")
    plan.set_defaults(func=cmd_plan)
    for name, func, helptext in (
        ("up", cmd_up, "boot both nodes, sync the project, make pods"),
        ("down", cmd_down, "power both nodes off and stop them by PID"),
    ):
        s = sub.add_parser(name, help=helptext)
        s.add_argument("kernel")
        s.set_defaults(func=func)
    for name, func, helptext in (
        ("test", cmd_test, "run the node smoke tier and zt's tiers in a lab that is up"),
        ("run", cmd_run, "up + test + down"),
    ):
        s = sub.add_parser(name, help=helptext)
        s.add_argument("kernel")
        s.add_argument("--tiers", default=os.environ.get("ZT_VM_TIERS", DEFAULT_TIERS))
        s.add_argument("--timeout", type=float, default=float(env_int("ZT_VM_TEST_TIMEOUT", 3600)))
        s.set_defaults(func=func)
    report = sub.add_parser("report", help="print the per-kernel results table")
    report.add_argument("kernels", nargs="+")
    report.set_defaults(func=cmd_report)
    summarize = sub.add_parser("summarize", help="summarize a pytest JUnit XML file as JSON")
    summarize.add_argument("junit")
    summarize.set_defaults(func=cmd_summarize)
    ssh = sub.add_parser("ssh", help="ssh into node N of a lab that is up")
    ssh.add_argument("kernel")
    ssh.add_argument("node", type=int)
    ssh.add_argument("command", nargs="*")
    ssh.set_defaults(func=cmd_ssh)
    probe = sub.add_parser("probe-accel", help="probe KVM once (cached) and print kvm or tcg")
    probe.add_argument("kernel")
    probe.set_defaults(func=lambda a: print(choose_accel(Paths(cache_dir(), a.kernel))) or 0)
    return p


def _raise_on_signal(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _raise_on_signal)  # so `finally` stops the VMs by PID
    args = parser().parse_args(argv)
    try:
        status: int = args.func(args)
    except ZtError as exc:
        print(f"vm.py: error ({exc.reason}): {exc}", file=sys.stderr)
        return exc.exit_code
    return status

"""Failures of BPF capture, each a class deriving from zt.errors (docs/design.md §6).

Host-check failures carry the fix in their message: an operator reads them once, at start-up.
"""

from __future__ import annotations

import errno as errno_mod
import os

from zt.errors import NotFoundError, UsageError, ZtError


class CaptureError(ZtError):
    """Base of capture failures: a pod's traffic cannot be steered as asked."""

    reason = "capture_error"
    exit_code = 3


class HostCheckError(CaptureError):
    """The host cannot run capture; the message says what is missing and how to fix it."""

    reason = "capture_host_unfit"

    def __init__(self, problem: str, fix: str) -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem}; fix: {fix}")


class NotRootError(HostCheckError):
    reason = "capture_not_root"


class KernelTooOldError(HostCheckError):
    reason = "capture_kernel_too_old"


class NoCgroup2Error(HostCheckError):
    reason = "capture_no_cgroup2"


class BccMissingError(HostCheckError):
    reason = "capture_bcc_missing"


class KernelHeadersMissingError(HostCheckError):
    reason = "capture_headers_missing"


class BpffsError(HostCheckError):
    reason = "capture_bpffs_missing"


class BpfSyscallError(CaptureError):
    """A bpf(2) (or setns(2)) call failed; `errno` is the kernel's answer."""

    reason = "capture_bpf_syscall"

    def __init__(self, op: str, err: int, detail: str = "") -> None:
        self.op = op
        self.errno = err
        name = errno_mod.errorcode.get(err, str(err))
        extra = f" ({detail})" if detail else ""
        super().__init__(f"{op} failed: {name}: {os.strerror(err)}{extra}")


class BpfLoadError(CaptureError):
    """bcc could not compile or the verifier refused a program."""

    reason = "capture_bpf_load"


class PodSpecError(UsageError):
    """A PodCapture with a field that does not fit (message names field, value, expectation)."""

    reason = "capture_bad_pod"


class PodNotEnrolledError(NotFoundError):
    reason = "capture_pod_unknown"


class CaptureBusyError(CaptureError):
    """This process already has an open Capture over the one compiled module."""

    reason = "capture_busy"


class CaptureIncompatibleError(CaptureError):
    """The pins were made by another zt build (its maps differ): re-opening them would run this
    build's user space against another build's programs."""

    reason = "capture_incompatible_pins"


class CaptureNotRunningError(NotFoundError):
    """No pinned capture under the pin directory."""

    reason = "capture_not_running"


class NoOriginalDestinationError(NotFoundError):
    """The accepted socket was not captured (or its entry expired)."""

    reason = "capture_no_orig_dst"


class RoutingError(CaptureError):
    """Installing or removing the sk_lookup-mode policy routing failed."""

    reason = "capture_routing"


class DeliveriesFullError(CaptureError):
    """zt_deliveries is full (ZT_MAX_DELIVERIES deliveries mid-handshake): this delivery cannot
    come from the caller's IP (zt/node/podnet.py delivers it from the pod's IP instead)."""

    reason = "capture_deliveries_full"

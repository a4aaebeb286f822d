"""Failure classes of the VM lab; each derives from zt's error tree and names what went wrong."""

from __future__ import annotations

from zt.errors import NotFoundError, UsageError, ZtError


class VmLabError(ZtError):
    """Base of the VM lab's failures."""

    reason = "vm_lab_error"
    exit_code = 1


class LabUsageError(UsageError):
    """A knob (flag or ZT_VM_* variable) holds a value the lab cannot use."""

    reason = "vm_bad_knob"


class ImageMissingError(NotFoundError):
    """The image for a kernel has not been built (vagrant/build-image.sh KERNEL)."""

    reason = "vm_image_missing"


class BootError(VmLabError):
    """A node's QEMU exited or its sshd did not answer before the deadline."""

    reason = "vm_boot_failed"


class GuestCommandError(VmLabError):
    """A command run in a node over ssh failed."""

    reason = "vm_guest_command_failed"

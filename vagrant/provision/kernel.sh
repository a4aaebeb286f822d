#!/usr/bin/env bash
# Vagrant provisioner (public box): installs the kernel the ZT_KERNEL knob names (6.1, 6.12 or an
# ABI) with its headers; the Vagrantfile reboots the node afterwards (GRUB boots the newest kernel).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
KERNEL_PKGS=$("$here/kernel-packages.sh" "${1:?usage: kernel.sh 6.1|6.12|<abi>}") "$here/packages.sh"

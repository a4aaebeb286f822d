#!/usr/bin/env bash
# Host set-up for the VM lab (idempotent; called by `make vm-test`, never by `make setup`):
# QEMU and qemu-img, debootstrap, rsync, ssh, and Vagrant with the libvirt provider so that
# `vagrant validate` and `vagrant box add` work offline (vagrant/README.md's package list).
set -euo pipefail

need=(qemu-system-x86 qemu-utils debootstrap rsync openssh-client e2fsprogs
      vagrant vagrant-libvirt dnsmasq-base)
missing=()
for p in "${need[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "vm setup: host packages present (${need[*]})"
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "vm setup: missing Debian packages ${missing[*]}; run as root" >&2
  exit 1
fi
echo "vm setup: installing Debian packages: ${missing[*]}"
apt-get update -qq
# --no-install-recommends: the recommends pull a host kernel image and a libvirt daemon; plain
# QEMU is what the automated path uses (vagrant/README.md: automated runs here should prefer plain QEMU).
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "vm setup: done"

#!/usr/bin/env bash
# Installs what a zt lab node needs (Debian 12 guest): systemd, sshd, python3 + venv, bcc, bpftool,
# iproute2 and the firewall tools, the DNS tools the tests use as real clients and upstreams (dig,
# dnsmasq's binary), plus the kernel and its headers named in KERNEL_PKGS.
# Debian kernels have no IKHEADERS, so bcc needs the headers package of the running kernel
# (vagrant/README.md: Debian kernels have no IKHEADERS: bcc needs the headers package).
# Used by build-image.sh (in the chroot) and by the Vagrantfile's shell provisioner (in the guest).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

guest_packages=(
  systemd systemd-sysv udev dbus openssh-server sudo kmod procps less
  netbase iproute2 iputils-ping iptables nftables ca-certificates openssl
  python3 python3-venv python3-bpfcc bpftool rsync make initramfs-tools
  bind9-dnsutils dnsmasq-base
)
# KERNEL_PKGS: the kernel + headers; IMAGE_PKGS: extras for the offline image (systemd-resolved,
# which a running Vagrant box should not switch to mid-provisioning). Space-separated lists.
# shellcheck disable=SC2206
kernel_packages=(${KERNEL_PKGS:-} ${IMAGE_PKGS:-})

apt-get update -qq
apt-get install -y -qq --no-install-recommends "${guest_packages[@]}" "${kernel_packages[@]}" >/dev/null
apt-get clean
echo "provision: installed ${#guest_packages[@]} packages${kernel_packages[*]:+ and ${kernel_packages[*]}}"

#!/usr/bin/env bash
# Host set-up for zt on Debian 12 (idempotent). Installs what bcc and the tests need (dnsmasq-base:
# the DNS tests' and bench's real upstream, the binary without the system service the `dnsmasq`
# package starts on port 53; bind9-dnsutils: dig) and links
# kernel headers when the running kernel has no headers package of its own (docs/design.md §6).
set -euo pipefail

need=(python3-bpfcc linux-headers-amd64 iproute2 bpftool python3-venv openssl
      iptables nftables iputils-ping etcd-server etcd-client prometheus
      dnsmasq-base bind9-dnsutils)
missing=()
for p in "${need[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "setup: missing Debian packages ${missing[*]}; run 'make setup' as root" >&2
    exit 1
  fi
  echo "setup: installing Debian packages: ${missing[*]}"
  apt-get -o DPkg::Lock::Timeout=600 update -qq
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq "${missing[@]}" >/dev/null
else
  echo "setup: Debian packages present (${need[*]})"
fi

# Packages that enable and start system services: etcd-server a system etcd on 2379/2380 (the fleet
# tests and the lab run their own members, docs/fleet.md), prometheus a Prometheus on 9090 and its
# recommended prometheus-node-exporter on 9100 (`zt lab up --prometheus` runs its own, zt/lab/
# prometheus.py). None of them may stay running or enabled.
quiet_service() {
  local svc=$1
  if [ -d /run/systemd/system ]; then
    if systemctl is-enabled --quiet "$svc" 2>/dev/null; then
      systemctl disable --now "$svc" >/dev/null 2>&1 && echo "setup: disabled the system $svc service"
    elif systemctl is-active --quiet "$svc" 2>/dev/null; then
      systemctl stop "$svc" && echo "setup: stopped the system $svc service"
    fi
  elif [ -x "/etc/init.d/$svc" ]; then
    # sysvinit/containers: the package's init script may have started it (and linked it to start
    # at boot)
    if /etc/init.d/"$svc" status >/dev/null 2>&1; then
      /etc/init.d/"$svc" stop >/dev/null && echo "setup: stopped the system $svc (init.d)"
    fi
    update-rc.d "$svc" disable >/dev/null 2>&1 || true
  fi
  return 0  # a service that would not stop is reported above; it must not end the set-up
}
for svc in etcd prometheus prometheus-node-exporter; do
  quiet_service "$svc"
done
if [ -d /run/systemd/system ]; then
  # the node exporter's textfile collectors come with timers of their own
  for timer in $(systemctl list-unit-files --plain --no-legend 'prometheus-node-exporter-*.timer' \
                 2>/dev/null | awk '{print $1}'); do
    quiet_service "$timer"
  done
fi

# bcc compiles against /lib/modules/$(uname -r)/build. Kernels without a Debian headers package
# (such as this machine's) get links to the newest installed linux-headers-*-amd64.
kdir="/lib/modules/$(uname -r)"
if [ -e "$kdir/build/include" ]; then
  echo "setup: kernel headers present at $kdir/build"
else
  hdr=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -z "$hdr" ]; then
    echo "setup: no /usr/src/linux-headers-*-amd64 found; install linux-headers-amd64" >&2
    exit 1
  fi
  common="${hdr%-amd64}-common"
  mkdir -p "$kdir"
  ln -sfn "$hdr" "$kdir/build"
  ln -sfn "$common" "$kdir/source"
  echo "setup: linked $kdir/build -> $hdr and $kdir/source -> $common (no headers package for $(uname -r))"
fi

# bpffs is where the daemon pins capture; tests do not pin but bpftool wants it.
if ! mount | grep -q " /sys/fs/bpf type bpf"; then
  mkdir -p /sys/fs/bpf && mount -t bpf bpf /sys/fs/bpf && echo "setup: mounted bpffs at /sys/fs/bpf"
fi

#!/usr/bin/env bash
# Vagrant provisioner: a lab node's packages, headers for the *running* kernel (bcc compiles
# against them), bpffs/debugfs mounted. Offline-safe: apt is only called when something is missing
# (the locally built box has everything; the public Debian box gets it from the archive).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
headers=linux-headers-$(uname -r)
need=(python3-bpfcc bpftool python3-venv iproute2 iptables nftables rsync make "$headers")
missing=()
for p in "${need[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  KERNEL_PKGS="$headers" "$here/packages.sh"
else
  echo "node: packages and $headers present"
fi
grep -q ' /sys/fs/bpf ' /etc/fstab || echo 'bpffs /sys/fs/bpf bpf defaults 0 0' >> /etc/fstab
grep -q ' /sys/kernel/debug ' /etc/fstab || echo 'debugfs /sys/kernel/debug debugfs defaults 0 0' >> /etc/fstab
mount | grep -q ' /sys/fs/bpf type bpf' || mount /sys/fs/bpf
mount | grep -q ' /sys/kernel/debug type debugfs' || mount /sys/kernel/debug
echo "node: $(uname -r) ready for bcc"

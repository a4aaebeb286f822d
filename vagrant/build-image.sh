#!/usr/bin/env bash
# Builds a bootable Debian 12 (bookworm) zt lab-node image for one kernel, with no Vagrant Cloud:
#   vagrant/.cache/images/<KERNEL>/{disk.qcow2,vmlinuz,initrd.img,kver}
# debootstrap (minbase) from Debian's archive -> systemd, sshd, python3, bcc, bpftool, iproute2, the
# firewall tools, zt's Python dependencies installed offline into /opt/zt/venv from wheels fetched
# on the host -> the kernel + headers installed in the chroot (vagrant/README.md: Build kernel variants in
# the chroot on the host: installing a second kernel inside a running emulated VM took 15 min vs
# < 2 min) -> `mkfs.ext4 -d` (no loop device) -> compressed qcow2. The kernel and initrd are copied
# out for direct kernel boot. A stamp makes a second call with the same inputs a no-op.
#
# Usage: build-image.sh KERNEL   (6.1 | 6.12 | a Debian kernel ABI such as 6.1.0-56-amd64)
# Knobs: ZT_VM_CACHE, ZT_VM_MIRROR, ZT_VM_SECURITY_MIRROR, ZT_VM_DISK_GB (6), ZT_VM_REBUILD=1.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
top=$(dirname "$here")
kernel=${1:?usage: build-image.sh KERNEL (6.1 | 6.12 | <debian kernel abi>)}
cache=${ZT_VM_CACHE:-$here/.cache}
mirror=${ZT_VM_MIRROR:-http://deb.debian.org/debian}
security=${ZT_VM_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
disk_gb=${ZT_VM_DISK_GB:-6}
kernel_pkgs=$("$here/provision/kernel-packages.sh" "$kernel")
out=$cache/images/$kernel
t0=$(date +%s)

log() { echo "build-image[$kernel]: $*"; }
die() { echo "build-image[$kernel]: error: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (debootstrap, chroot)"
for tool in debootstrap qemu-img mkfs.ext4 python3; do
  command -v "$tool" >/dev/null || die "$tool missing: run vagrant/setup-host.sh"
done

# Everything that shapes the image goes into its cache key.
reqs=$(python3 "$here/provision/requirements.py" "$top/pyproject.toml")
image_inputs=("$here/build-image.sh" "$here/provision/packages.sh" "$here/provision/kernel-packages.sh"
  "$here/provision/requirements.py" "$here"/guest/*)
base_key=$( { cat "${image_inputs[@]}"; echo "$reqs $mirror $security"; } | sha256sum | cut -c1-16)
image_key="$base_key $kernel_pkgs $disk_gb"
if [ "${ZT_VM_REBUILD:-0}" != 1 ] && [ -f "$out/.stamp" ] && [ "$(cat "$out/.stamp")" = "$image_key" ]; then
  log "reusing cached image $out ($(cat "$out/kver"))"
  exit 0
fi

mounted=()
cleanup() {
  local i
  for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do umount -l "${mounted[i]}" 2>/dev/null || true; done
  mounted=()
}
trap cleanup EXIT
trap 'exit 130' INT TERM # so the EXIT trap unmounts the chroot's proc/sys/dev

in_chroot() { # run a command in the chroot with proc/sys/dev and the host's resolver
  local root=$1
  shift
  if [ ${#mounted[@]} -eq 0 ]; then
    mount -t proc proc "$root/proc" && mounted+=("$root/proc")
    mount -t sysfs sys "$root/sys" && mounted+=("$root/sys")
    mount --bind /dev "$root/dev" && mounted+=("$root/dev")
    mount -t devpts devpts "$root/dev/pts" && mounted+=("$root/dev/pts")
  fi
  cp --remove-destination /etc/resolv.conf "$root/etc/resolv.conf"
  chroot "$root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
    DEBIAN_FRONTEND=noninteractive "$@"
}

fetch_wheels() { # host-side: wheels for the guest's CPython 3.11 on glibc 2.36 (bookworm)
  local dir=$cache/wheels-$base_key
  if [ ! -f "$dir/.done" ]; then
    log "downloading wheels for: $(echo "$reqs" | tr '\n' ' ')"
    rm -rf "$cache"/wheels-* && mkdir -p "$dir"
    echo "$reqs" > "$dir/requirements.txt"
    # pip does not widen --platform to older manylinux levels: list every level glibc 2.36 runs.
    local plats=() v
    for v in $(seq 36 -1 5); do plats+=(--platform "manylinux_2_${v}_x86_64"); done
    plats+=(--platform manylinux2014_x86_64 --platform manylinux2010_x86_64 --platform manylinux1_x86_64)
    PIP_FIND_LINKS='' python3 -m pip download -q -d "$dir" --only-binary=:all: \
      --implementation cp --python-version 3.11 --abi cp311 --abi abi3 --abi none \
      "${plats[@]}" -r "$dir/requirements.txt" 2> >(grep -v 'is ignored: it is neither a file' >&2)
    touch "$dir/.done"
  fi
  wheels=$dir
}

configure_guest() { # files and units that make a booted copy a usable, unique lab node
  local r=$1
  install -m 0644 "$here/guest/fstab" "$r/etc/fstab"
  install -m 0644 "$here/guest/99-zt-dhcp.network" "$r/etc/systemd/network/99-zt-dhcp.network"
  install -m 0755 "$here/guest/zt-cmdline" "$r/usr/local/sbin/zt-cmdline"
  install -m 0644 "$here/guest/zt-cmdline.service" "$r/etc/systemd/system/zt-cmdline.service"
  install -m 0644 "$here/guest/sshd-zt.conf" "$r/etc/ssh/sshd_config.d/zt.conf"
  echo zt-node > "$r/etc/hostname"
  in_chroot "$r" systemctl enable -q zt-cmdline.service systemd-networkd.service systemd-resolved.service ssh.service
  # Timers and waits that only cost boot time under emulation.
  in_chroot "$r" systemctl mask -q apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer \
    fstrim.timer systemd-networkd-wait-online.service
  in_chroot "$r" passwd -q -l root
  # The local Vagrant box logs in as `vagrant` with Vagrant's well-known insecure key (replaced on
  # first `vagrant up`); the key comes from the host's vagrant package.
  local vkey
  vkey=$(ls /usr/share/rubygems-integration/all/gems/vagrant-*/keys/vagrant.pub 2>/dev/null | head -n 1 || true)
  if [ -n "$vkey" ]; then
    in_chroot "$r" sh -c 'id vagrant >/dev/null 2>&1 || useradd -m -s /bin/bash vagrant'
    install -d -m 0700 "$r/home/vagrant/.ssh"
    install -m 0600 "$vkey" "$r/home/vagrant/.ssh/authorized_keys"
    in_chroot "$r" chown -R vagrant:vagrant /home/vagrant/.ssh
    echo 'vagrant ALL=(ALL) NOPASSWD: ALL' > "$r/etc/sudoers.d/vagrant" && chmod 0440 "$r/etc/sudoers.d/vagrant"
  else
    log "no vagrant package on the host: image has no 'vagrant' user (build-box.sh needs one)"
  fi
}

build_base() { # debootstrap + packages + venv, shared by every kernel variant
  local base=$cache/base
  if [ -f "$base/.stamp" ] && [ "$(cat "$base/.stamp")" = "$base_key" ]; then
    log "reusing base rootfs ($base)"
    return
  fi
  fetch_wheels
  rm -rf "$base" && mkdir -p "$base"
  log "debootstrap bookworm (minbase) from $mirror"
  debootstrap --variant=minbase bookworm "$base/rootfs" "$mirror" > "$base/debootstrap.log" 2>&1 \
    || die "debootstrap failed; see $base/debootstrap.log"
  local r=$base/rootfs
  cat > "$r/etc/apt/sources.list" <<EOF
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb $security bookworm-security main
EOF
  printf '#!/bin/sh\nexit 101\n' > "$r/usr/sbin/policy-rc.d" && chmod 0755 "$r/usr/sbin/policy-rc.d"
  log "installing guest packages (systemd, sshd, python3, bcc, bpftool, iproute2, ...)"
  install -m 0755 "$here/provision/packages.sh" "$r/tmp/packages.sh"
  in_chroot "$r" env IMAGE_PKGS="systemd-resolved" /tmp/packages.sh
  log "installing zt's Python dependencies offline into /opt/zt/venv"
  mkdir -p "$r/opt/zt" && cp -r "$wheels" "$r/opt/zt/wheels"
  in_chroot "$r" python3 -m venv /opt/zt/venv
  in_chroot "$r" /opt/zt/venv/bin/pip install -q --no-index --find-links /opt/zt/wheels \
    -r /opt/zt/wheels/requirements.txt
  # Debian's bcc is pure Python under dist-packages: link only that package (as setup-venv.sh does).
  in_chroot "$r" sh -c 'ln -sfn /usr/lib/python3/dist-packages/bcc "$(/opt/zt/venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()[\"purelib\"])")/bcc"'
  configure_guest "$r"
  cleanup
  echo "$base_key" > "$base/.stamp"
}

build_kernel_variant() {
  local work=$cache/work/$kernel
  rm -rf "$work" && mkdir -p "$work"
  log "copying base rootfs"
  cp -a "$cache/base/rootfs" "$work/rootfs"
  local r=$work/rootfs
  log "installing $kernel_pkgs in the chroot"
  install -m 0755 "$here/provision/packages.sh" "$r/tmp/packages.sh"
  in_chroot "$r" env KERNEL_PKGS="$kernel_pkgs" /tmp/packages.sh
  local kver
  kver=$(ls "$r/lib/modules" | sort -V | tail -n 1)
  # build is an absolute link into /usr/src: resolve it inside the chroot, not on the host.
  in_chroot "$r" test -e "/lib/modules/$kver/build/include" || die "no headers at /lib/modules/$kver/build"
  cleanup
  # Image hygiene (vagrant/README.md, image hygiene): empty machine-id (else two VMs share a DHCP lease), no sshd
  # host keys, systemd-resolved's stub as resolv.conf, no apt lists or policy-rc.d.
  : > "$r/etc/machine-id"
  rm -f "$r"/etc/ssh/ssh_host_* "$r/usr/sbin/policy-rc.d" "$r/tmp/packages.sh" "$r/var/lib/dbus/machine-id"
  rm -rf "$r"/var/lib/apt/lists/* "$r"/var/cache/apt/*.bin
  ln -sfn /run/systemd/resolve/stub-resolv.conf "$r/etc/resolv.conf"
  local used_kb
  used_kb=$(du -sk "$r" | cut -f1)
  [ "$used_kb" -lt $(((disk_gb - 1) * 1024 * 1024)) ] || die "rootfs ($used_kb KiB) does not fit ${disk_gb}G"
  log "making ext4 (${disk_gb}G, $((used_kb / 1024)) MiB used) and a compressed qcow2"
  rm -rf "$out.new" && mkdir -p "$out.new"
  truncate -s "${disk_gb}G" "$work/disk.raw"
  mkfs.ext4 -q -L labroot -d "$r" "$work/disk.raw"
  qemu-img convert -c -O qcow2 "$work/disk.raw" "$out.new/disk.qcow2"
  cp "$r/boot/vmlinuz-$kver" "$out.new/vmlinuz"
  cp "$r/boot/initrd.img-$kver" "$out.new/initrd.img"
  echo "$kver" > "$out.new/kver"
  [ -e "$r/home/vagrant/.ssh/authorized_keys" ] && touch "$out.new/has-vagrant-user"
  echo "$image_key" > "$out.new/.stamp"
  rm -rf "$out" && mv "$out.new" "$out"
  rm -rf "$work"
}

mkdir -p "$cache"
build_base
build_kernel_variant
log "done in $(($(date +%s) - t0)) s: $out ($(cat "$out/kver"), $(du -h "$out/disk.qcow2" | cut -f1) qcow2)"

#!/usr/bin/env bash
# Packs the image built by build-image.sh into a local Vagrant box for the libvirt provider:
#   vagrant/.cache/boxes/zt-bookworm-<KERNEL>.box = tar of box.img (the qcow2), metadata.json,
#   vmlinuz, initrd.img and a box Vagrantfile that boots them directly (vagrant/README.md).
# With --add, also `vagrant box add --force --name zt/bookworm-<KERNEL>` (works offline).
# Remove it with `vagrant box remove zt/bookworm-<KERNEL>`; after a `vagrant up --provider=libvirt`
# also delete the box's volume from the libvirt pool (`virsh vol-list default`).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
kernel=${1:?usage: build-box.sh KERNEL [--add]}
cache=${ZT_VM_CACHE:-$here/.cache}
image=$cache/images/$kernel
name=zt/bookworm-$kernel
box=$cache/boxes/zt-bookworm-$kernel.box

[ -f "$image/kver" ] || { echo "build-box: no image for $kernel; run vagrant/build-image.sh $kernel" >&2; exit 1; }
[ -f "$image/has-vagrant-user" ] || {
  echo "build-box: image $image has no 'vagrant' user (built without the vagrant package); rebuild it" >&2
  exit 1
}
stage=$cache/boxes/stage-$kernel
rm -rf "$stage" && mkdir -p "$stage"
trap 'rm -rf "$stage"' EXIT
ln "$image/disk.qcow2" "$stage/box.img" 2>/dev/null || cp "$image/disk.qcow2" "$stage/box.img"
cp "$image/vmlinuz" "$image/initrd.img" "$stage/"
cp "$here/box/Vagrantfile" "$stage/Vagrantfile"
# virtual_size in GiB: the ext4 image's size (build-image.sh ZT_VM_DISK_GB).
gb=$(qemu-img info --output=json "$stage/box.img" | python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"] // 2**30)')
printf '{"provider": "libvirt", "format": "qcow2", "virtual_size": %s}\n' "$gb" > "$stage/metadata.json"
tar -C "$stage" -cf "$box.new" metadata.json Vagrantfile box.img vmlinuz initrd.img
mv "$box.new" "$box"
echo "build-box: $box ($(du -h "$box" | cut -f1), kernel $(cat "$image/kver"))"
if [ "${2:-}" = --add ]; then
  # Vagrant keeps per-project state next to the Vagrantfile it finds: keep it in the cache.
  export VAGRANT_DOTFILE_PATH=$cache/dotvagrant VAGRANT_CHECKPOINT_DISABLE=1
  vagrant box add --force --name "$name" "$box"
  vagrant box list | grep -F "$name"
fi

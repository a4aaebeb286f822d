#!/usr/bin/env bash
# Prints the Debian kernel + headers packages for a KERNEL knob value:
#   6.1  -> the bookworm default (linux-image-amd64, today 6.1.0-56-amd64 from bookworm-security)
#   6.12 -> linux-image-6.12-amd64 (6.12.117+deb12-amd64, bookworm-security)
#   any other value is taken as a kernel ABI name, e.g. 6.1.0-56-amd64.
set -euo pipefail
case "${1:?usage: kernel-packages.sh 6.1|6.12|<abi>}" in
  6.1) echo "linux-image-amd64 linux-headers-amd64" ;;
  6.12) echo "linux-image-6.12-amd64 linux-headers-6.12-amd64" ;;
  *[!A-Za-z0-9.+-]*) echo "kernel-packages: KERNEL='$1' is not a version or ABI name" >&2; exit 2 ;;
  *) echo "linux-image-$1 linux-headers-$1" ;;
esac

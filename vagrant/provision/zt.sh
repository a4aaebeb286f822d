#!/usr/bin/env bash
# Vagrant provisioner: installs zt from the synced tree. The locally built box carries a venv and
# wheels (/opt/zt): install offline into it and point the project's .venv at it. Elsewhere
# `make setup` does what it does on any Debian 12 machine.
set -euo pipefail
tree=${1:?usage: zt.sh PROJECT_DIR}
if [ -x /opt/zt/venv/bin/pip ] && [ -d /opt/zt/wheels ]; then
  /opt/zt/venv/bin/pip install -q --no-index --find-links /opt/zt/wheels --no-build-isolation --no-deps -e "$tree"
  ln -sfn /opt/zt/venv "$tree/.venv"
  echo "zt: installed offline into /opt/zt/venv ($tree/.venv)"
else
  make -C "$tree" setup
fi

#!/usr/bin/env bash
# Creates .venv, installs zt with its test extras, and makes Debian's bcc importable inside it.
set -euo pipefail
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV with $($PY --version)"
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -e '.[test]'
# Debian ships bcc as pure Python under dist-packages (it loads libbcc.so through ctypes). Link only
# that package into the venv: adding all of dist-packages would shadow the venv's own packages.
site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
if [ -d /usr/lib/python3/dist-packages/bcc ]; then
  ln -sfn /usr/lib/python3/dist-packages/bcc "$site/bcc"
  "$VENV/bin/python" -c 'import bcc' && echo "setup: bcc importable in $VENV"
else
  echo "setup: /usr/lib/python3/dist-packages/bcc missing (python3-bpfcc not installed?)" >&2
  exit 1
fi

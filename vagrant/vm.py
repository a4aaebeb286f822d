#!/usr/bin/env python3
"""zt's offline VM lab: `vagrant/vm.py run 6.12` boots two QEMU nodes from the image that
vagrant/build-image.sh built, runs the test tiers inside, prints the results, stops them by PID.
Run with the project's venv (it uses zt's error tree): `.venv/bin/python vagrant/vm.py --help`."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

from vmlab.cli import main

if __name__ == "__main__":
    sys.exit(main())

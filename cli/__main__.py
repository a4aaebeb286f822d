"""`python -m zt.cli` (installed) or `python -m cli` (checkout): the same as the `zt` script."""

from .main import main

main()

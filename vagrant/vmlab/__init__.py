"""The offline VM lab: boot zt lab nodes with QEMU from images built by vagrant/build-image.sh.

plan (pure: node layout, kernel command line, QEMU argv), results (pure: JUnit XML -> per-kernel
summary and table), errors (the failure classes), and the thin process/ssh adapters in qemu and ssh;
cli composes them (`python3 vagrant/vm.py --help`).
"""

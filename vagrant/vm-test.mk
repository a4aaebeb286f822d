# The VM lab on real kernels, included by the top-level Makefile. Not part of `make test`:
# under software emulation a run takes minutes per kernel.
#
#   make vm-test [KERNEL=6.1|6.12|all] [VM_TIERS="tests/netns tests/packets tests/node tests/ktls"]
#       build (or reuse) the image of each kernel, boot two QEMU nodes, sync the project, make pods,
#       run the node smoke tier and zt's test tiers inside, print results per kernel, stop by PID
#   make vm-image [KERNEL=…]   build or reuse the cached images (vagrant/.cache/images/<kernel>)
#   make vm-box [KERNEL=…]     pack them as local libvirt boxes and `vagrant box add` them (offline)
#   make vm-validate           `vagrant validate` with the default and the local-box knobs
#   make vm-tooling            the tooling's fast tests (tests/vm) with Vagrant required
#   make vm-up / vm-down KERNEL=6.12   keep a lab running to explore (vagrant/vm.py ssh 6.12 1)
#   make vm-clean              stop any lab VMs by PID and delete vagrant/.cache
KERNEL ?= all
VM_KERNELS_ALL := 6.1 6.12
VM_KERNELS = $(if $(filter all,$(KERNEL)),$(VM_KERNELS_ALL),$(KERNEL))
VM_TIERS ?= tests/netns tests/packets tests/node tests/ktls
VM_PY = $(or $(VENV),.venv)/bin/python
VM_VAGRANT = VAGRANT_DOTFILE_PATH=vagrant/.cache/dotvagrant vagrant

.PHONY: vm-setup vm-image vm-box vm-validate vm-tooling vm-test vm-up vm-down vm-clean

vm-setup:
	@vagrant/setup-host.sh

vm-image: vm-setup
	@for k in $(VM_KERNELS); do vagrant/build-image.sh $$k || exit 1; done

vm-box: vm-image
	@for k in $(VM_KERNELS); do vagrant/build-box.sh $$k --add || exit 1; done

vm-validate: vm-setup
	@$(VM_VAGRANT) validate
	@ZT_BOX=zt/bookworm-6.12 ZT_LIBVIRT_DRIVER=qemu ZT_KERNEL=6.12 $(VM_VAGRANT) validate

# The tooling's own fast tests, with Vagrant required (in `make test` they skip without it).
vm-tooling: setup vm-setup
	@ZT_REQUIRE_VAGRANT=1 $(VM_PY) -m pytest -q -p no:cacheprovider tests/vm

# One kernel at a time (2 cores here); every kernel runs even if one fails, then the table.
vm-test: setup vm-validate vm-tooling vm-image
	@rc=0; for k in $(VM_KERNELS); do \
	  $(VM_PY) vagrant/vm.py run $$k --tiers "$(VM_TIERS)" || rc=1; \
	done; \
	echo; echo "== zt VM lab: results per kernel =="; \
	$(VM_PY) vagrant/vm.py report $(VM_KERNELS) || rc=1; exit $$rc

vm-up: setup vm-image
	@for k in $(VM_KERNELS); do $(VM_PY) vagrant/vm.py up $$k || exit 1; done

vm-down:
	@for k in $(VM_KERNELS); do $(VM_PY) vagrant/vm.py down $$k; done

vm-clean:
	@for k in $(VM_KERNELS_ALL) $(notdir $(wildcard vagrant/.cache/run/*)); do \
	  $(VM_PY) vagrant/vm.py down $$k >/dev/null; done
	rm -rf vagrant/.cache

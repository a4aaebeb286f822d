# `make lab`: the local lab on this machine. Included by the Makefile.
#   make lab                 set up, `zt lab up`, `zt lab demo`, `zt lab down`; fails if a row fails
#   make lab KEEP=1          leave the lab running afterwards and print how to explore it
#   make lab-down            remove a lab left running (idempotent)
# Knobs: LAB_NAME (namespaces zt-<name>-*), LAB_NODES, LAB_PODS, LAB_CAPTURE (connect | sklookup),
#   LAB_CONTROL (etcd: 3 etcd members + the signer on a control host, nodes joined with tokens;
#   file: one mesh file and CA dir, what `zt lab up` builds by default), LAB_WAYPOINT (1: a waypoint
#   Envoy in front of a web service, with its demo rows; 0: none, as plain `zt lab up`).
VENV ?= .venv
LAB_NAME ?= lab
LAB_NODES ?= 2
LAB_PODS ?= 2
LAB_CAPTURE ?= connect
LAB_CONTROL ?= etcd
LAB_WAYPOINT ?= 1
LAB_ZT := $(VENV)/bin/zt
LAB_FLAGS := --name $(LAB_NAME)

.PHONY: lab lab-down

# `up` removes what it built when it fails, so only demo's outcome decides whether `down` runs.
lab: setup
	@$(LAB_ZT) lab up $(LAB_FLAGS) --nodes $(LAB_NODES) --pods $(LAB_PODS) --capture $(LAB_CAPTURE) \
	  --control $(LAB_CONTROL) $(if $(filter 1,$(LAB_WAYPOINT)),--waypoint)
	@rc=0; $(LAB_ZT) lab demo $(LAB_FLAGS) || rc=$$?; \
	if [ "$(KEEP)" = "1" ]; then \
	  echo; echo "lab '$(LAB_NAME)' left running (KEEP=1). Explore it:"; \
	  echo "  $(LAB_ZT) lab status $(LAB_FLAGS) [--json]"; \
	  echo "  $(LAB_ZT) lab exec $(LAB_FLAGS) pod1-1 -- $(VENV)/bin/python -m zt.lab.apps send 10.96.0.10 80 hi"; \
	  echo "  $(LAB_ZT) lab exec $(LAB_FLAGS) pod1-1 -- ss -tn       # any command, inside the pod"; \
	  echo "  $(LAB_ZT) lab exec $(LAB_FLAGS) node1 -- curl -s localhost:15020/metrics"; \
	  echo "  $(LAB_ZT) lab exec $(LAB_FLAGS) node1 -- curl -s localhost:15000/config_dump"; \
	  if [ "$(LAB_WAYPOINT)" = "1" ]; then \
	    echo "  $(LAB_ZT) lab exec $(LAB_FLAGS) pod1-1 -- curl -s 10.96.0.20/admin   # 403 from the waypoint"; \
	    echo "  $(LAB_ZT) lab exec $(LAB_FLAGS) waypoint -- curl -s localhost:15000/stats  # its Envoy"; \
	  fi; \
	  echo "  $(LAB_ZT) lab demo $(LAB_FLAGS)            # the scenario table again"; \
	  echo "  $(LAB_ZT) lab config get $(LAB_FLAGS)      # the mesh document (fleet lab: from etcd)"; \
	  echo "  logs: /run/zt/lab-$(LAB_NAME)/node*.log"; \
	  echo "  make lab-down LAB_NAME=$(LAB_NAME)         # remove everything"; \
	else \
	  $(LAB_ZT) lab down $(LAB_FLAGS) || rc=$$?; \
	fi; \
	exit $$rc

lab-down:
	@$(LAB_ZT) lab down $(LAB_FLAGS)

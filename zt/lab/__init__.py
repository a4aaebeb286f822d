"""The local lab: nodes and pods as network namespaces on one machine.

control.py (up/down/status/exec) builds topology.py's namespaces, runs runner.py's processes and
keeps state.py's record; demo.py drives the scenario table. A fleet lab (`--control etcd`) adds
fleet.py's control host (etcd, the signer, node joins), fleetdemo.py / fleetident.py's rows,
labconfig.py (`zt lab config get|push`) and shortsigner.py (short leaves for rotation proofs).
"""

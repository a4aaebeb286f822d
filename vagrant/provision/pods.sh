#!/usr/bin/env bash
# Pods as network namespaces on a lab node: a bridge zt-br0 (10.<node>.0.1/24), one netns per pod
# (pod<node>-<n>, eth0 = 10.<node>.0.<n+1>, default route via the bridge), IP forwarding, and a
# route to every other node's pod CIDR via that node's address on the node link. Idempotent:
# removes this script's previous pods and bridge first. `pods.sh --down` only removes them.
#
# Usage: pods.sh NODE_INDEX POD_COUNT [PEER_CIDR=PEER_LINK_IP ...]
#        pods.sh --down
set -euo pipefail

down() {
  local ns link
  # Delete the veth pairs first, synchronously: a deleted netns takes its veth end (and so the
  # pair) down asynchronously, and recreating vp<n>-<m> at once would fail with "File exists".
  for link in $(ip -o link show type veth | awk -F'[:@ ]+' '{print $2}' | grep -E '^vp[0-9]+-[0-9]+$' || true); do
    ip link del "$link"
  done
  for ns in $(ip netns list | awk '{print $1}' | grep -E '^pod[0-9]+-[0-9]+$' || true); do
    ip netns del "$ns"
  done
  ip link del zt-br0 2>/dev/null || true
}

if [ "${1:-}" = --down ]; then
  down
  echo "pods: removed"
  exit 0
fi
node=${1:?usage: pods.sh NODE_INDEX POD_COUNT [CIDR=VIA ...]}
count=${2:?usage: pods.sh NODE_INDEX POD_COUNT [CIDR=VIA ...]}
shift 2
case "$node$count" in *[!0-9]*) echo "pods: NODE_INDEX and POD_COUNT must be integers" >&2; exit 2 ;; esac

down
sysctl -qw net.ipv4.ip_forward=1
ip link add zt-br0 type bridge
ip addr add "10.$node.0.1/24" dev zt-br0
ip link set zt-br0 up
for n in $(seq 1 "$count"); do
  ns=pod$node-$n
  ip netns add "$ns"
  ip link add "vp$node-$n" type veth peer name eth0 netns "$ns"
  ip link set "vp$node-$n" master zt-br0 up
  ip -n "$ns" addr add "10.$node.0.$((n + 1))/24" dev eth0
  ip -n "$ns" link set lo up
  ip -n "$ns" link set eth0 up
  ip -n "$ns" route add default via "10.$node.0.1"
done
for peer in "$@"; do
  ip route replace "${peer%%=*}" via "${peer#*=}"
done
echo "pods: node $node has $count pod(s) on zt-br0 10.$node.0.0/24${*:+, routes $*}"

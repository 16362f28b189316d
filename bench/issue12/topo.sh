#!/bin/bash
# Experiment topology mirroring the bench bed: client -- node(eth3) -- 4 backends with named -n 1.
# usage: topo.sh up|down
P=bp12
set -e
if [ "$1" = down ]; then
  for i in 0 1 2 3; do [ -f /tmp/exp/named$i/named.pid ] && kill $(cat /tmp/exp/named$i/named.pid) 2>/dev/null || true; done
  sleep 1
  for n in client node be0 be1 be2 be3; do ip netns del $P-$n 2>/dev/null || true; done
  exit 0
fi
for n in client node be0 be1 be2 be3; do ip netns add $P-$n; done
C="ip netns exec $P-client"; N="ip netns exec $P-node"
$N sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.default.rp_filter=0 net.ipv4.conf.all.rp_filter=0
$N ip link add eth3 type veth peer name eth0 netns $P-client
$N ip addr add 192.0.2.10/24 dev eth3; $N ip addr add 192.0.2.11/24 dev eth3 label eth3:1
$N ip link set eth3 up; $N ip link set lo up
$C ip addr add 192.0.2.100/24 dev eth0; $C ip link set eth0 up; $C ip link set lo up
$C ip route add default via 192.0.2.10
$C ethtool -K eth0 tx off >/dev/null
$N ip route add 198.18.0.0/16 via 192.0.2.100 dev eth3
for i in 0 1 2 3; do
  B="ip netns exec $P-be$i"; a=10.100.13.$((i+2))
  $N ip link add be$i type veth peer name eth0 netns $P-be$i
  $N sysctl -qw net.ipv4.conf.be$i.rp_filter=0
  $N ip addr add 10.100.13.1/32 dev be$i; $N ip link set be$i up; $N ip route add $a/32 dev be$i
  $B ip addr add $a/32 dev eth0; $B ip link set eth0 up; $B ip link set lo up
  $B ip route add 10.100.13.1/32 dev eth0; $B ip route add default via 10.100.13.1 dev eth0
  d=/tmp/exp/named$i; mkdir -p $d
  cat > $d/example.zone <<Z
\$ORIGIN example.
\$TTL 60
@ IN SOA ns hostmaster 1 3600 600 86400 60
@ IN NS ns
ns IN A $a
whoami IN A $a
health IN A 127.0.0.1
Z
  cat > $d/named.conf <<Z
options { directory "$d"; pid-file "$d/named.pid"; session-keyfile "$d/session.key"; managed-keys-directory "$d";
 listen-on port 53 { $a; }; listen-on-v6 { none; }; recursion no; dnssec-validation no; notify no; ${UDPRB:-} };
controls { };
zone "example." { type primary; file "$d/example.zone"; };
Z
  (cd $d && $B named -g -n 1 -c $d/named.conf > $d/log 2>&1 &)
done
sleep 2
$C dig +short +time=1 @192.0.2.10 whoami.example. 2>/dev/null || true
for i in 0 1 2 3; do ip netns exec $P-client true; done
echo up

#!/bin/bash
# bytes charged per queued query at each backend's socket (named stopped)
for i in 0 1 2 3; do kill -STOP $(cat /tmp/exp/named$i/named.pid); done
mac=$(ip netns exec bp12-node cat /sys/class/net/eth3/address)
ip netns exec bp12-client kxdpgun -t ${T:-1} -Q ${Q:-100} -I eth0 -l 198.18.0.0/16 -R $mac -p 53 -i /tmp/exp/queries.txt 192.0.2.10 >/dev/null 2>&1
sleep 0.3
for i in 0 1 2 3; do
  r=$(ip netns exec bp12-be$i ss -uamn | grep -o 'skmem:(r[0-9]*' | grep -o '[0-9]*$'); q=$(ip netns exec bp12-be$i ss -uan | awk 'NR==2{print $2}')
  echo "$1 be$i: rmem_alloc $r bytes, recv-q $q"
done
for i in 0 1 2 3; do kill -CONT $(cat /tmp/exp/named$i/named.pid); done

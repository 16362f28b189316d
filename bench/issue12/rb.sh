#!/bin/bash
# rb.sh BYTES|default : restart every named with udp-receive-buffer BYTES
for i in 0 1 2 3; do
  d=/tmp/exp/named$i; kill $(cat $d/named.pid); done; sleep 1.5
for i in 0 1 2 3; do
  d=/tmp/exp/named$i
  if [ "$1" = default ]; then sed -i 's/ udp-receive-buffer [0-9]*;//' $d/named.conf
  else sed -i 's/ udp-receive-buffer [0-9]*;//; s/notify no;/notify no; udp-receive-buffer '$1';/' $d/named.conf; fi
  (cd $d && ip netns exec bp12-be$i named -g -n 1 -c $d/named.conf > $d/log 2>&1 &)
done
sleep 2; ip netns exec bp12-be0 ss -uamn | grep skmem

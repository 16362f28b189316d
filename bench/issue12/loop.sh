#!/bin/bash
# loop.sh REPS "RATES" "METHODS" SECS [extra step.py flags]
reps=$1; rates=$2; methods=$3; secs=$4; shift 4
for r in $(seq $reps); do for m in $methods; do
  /tmp/exp/m.sh on $m
  for rate in $rates; do ip netns exec bp12-node conntrack -F >/dev/null 2>&1; sleep 0.5; python3 /tmp/exp/step.py $m $rate $secs "$@"; done
  /tmp/exp/m.sh off $m
done; done

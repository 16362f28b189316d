#!/bin/bash
cd /tmp/exp
for r in 1 2 3; do
  ./rb.sh default >/dev/null
  for m in ipt driver; do ./m.sh on $m; ip netns exec bp12-node conntrack -F >/dev/null 2>&1; python3 stall.py $m 20000 3 60 250; ./m.sh off $m; done
  ./rb.sh 138000 >/dev/null
  ./m.sh on driver; python3 stall.py driver+buffer 20000 3 60 250; ./m.sh off driver
done
./rb.sh default >/dev/null

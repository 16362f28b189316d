#!/bin/bash
# m.sh on|off METHOD   METHOD: ipt | driver | skb | redirect
N="ip netns exec bp12-node"
case "$1-$2" in
 on-ipt) $N iptables-restore < /tmp/exp/ipt.rules ;;
 off-ipt) $N nft flush ruleset; $N conntrack -F >/dev/null 2>&1 ;;
 on-driver|on-skb) $N /tmp/exp/dnsteer run --config /tmp/exp/dnsteer.toml --xdp-mode=$2 > /tmp/exp/dnsteer.log 2>&1 & sleep 1.5 ;;
 on-redirect) (echo 'forward = "redirect"'; cat /tmp/exp/dnsteer.toml) > /tmp/exp/dnsteer-r.toml; $N /tmp/exp/dnsteer run --config /tmp/exp/dnsteer-r.toml --xdp-mode=driver > /tmp/exp/dnsteer.log 2>&1 & sleep 1.5 ;;
 off-*) pkill -INT -f "^/tmp/exp/dnsteer run" ; sleep 1 ;;
esac
if [ "$2" = redirect ]; then for i in 0 1 2 3; do ip netns exec bp12-be$i ethtool -K eth0 gro $([ $1 = on ] && echo on || echo off) >/dev/null; done; fi

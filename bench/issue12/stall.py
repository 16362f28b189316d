#!/usr/bin/env python3
"""Controlled stalls: every named stopped for STALL_MS every PERIOD_MS while kxdpgun sends RATE for SECS.
usage: stall.py LABEL RATE SECS STALL_MS PERIOD_MS"""
import os, sys, subprocess, time, signal, json, re
label, rate, secs, stall, period = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
pids = [int(open(f"/tmp/exp/named{i}/named.pid").read()) for i in range(4)]
def rcv(i):
    t = subprocess.run(["ip","netns","exec",f"bp12-be{i}","cat","/proc/net/snmp"],capture_output=True,text=True).stdout.splitlines()
    u=[l for l in t if l.startswith("Udp:")]; d=dict(zip(u[0].split()[1:], map(int,u[1].split()[1:]))); return d["RcvbufErrors"]
r0=[rcv(i) for i in range(4)]
mac=subprocess.run(["ip","netns","exec","bp12-node","cat","/sys/class/net/eth3/address"],capture_output=True,text=True).stdout.strip()
kx=subprocess.Popen(["ip","netns","exec","bp12-client","kxdpgun","-t",str(secs),"-Q",str(rate),"-I","eth0","-l","198.18.0.0/16","-R",mac,"-p","53","-i","/tmp/exp/queries.txt","192.0.2.10"],stdout=subprocess.PIPE,stderr=subprocess.STDOUT,text=True)
time.sleep(1.2)  # kxdpgun start-up
t_end = time.time() + secs - 0.4
n = 0
while time.time() < t_end:
    for p in pids: os.kill(p, signal.SIGSTOP)
    time.sleep(stall/1000)
    for p in pids: os.kill(p, signal.SIGCONT)
    n += 1
    time.sleep((period-stall)/1000)
out,_=kx.communicate()
r1=[rcv(i) for i in range(4)]
sent=int(re.findall(r"total queries:\s+(\d+)",out)[-1]); ans=int(re.findall(r"total replies:\s+(\d+)",out)[-1])
print(json.dumps(dict(label=label,rate=rate,stalls=n,stall_ms=stall,sent=sent,answered=ans,rcvbuf=sum(b-a for a,b in zip(r0,r1)),
      per_stall_per_backend=round(sum(b-a for a,b in zip(r0,r1))/max(n,1)/4,1), load=open("/proc/loadavg").read().split()[0])))

#!/usr/bin/env python3
"""One measured step on the bp12 topology: method already on the node.
usage: step.py LABEL RATE SECONDS [--sample] [--cap]"""
import os, sys, subprocess, time, json, re, threading, glob
P = "bp12"
label, rate, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
sample = "--sample" in sys.argv
cap = "--cap" in sys.argv
HZ = os.sysconf("SC_CLK_TCK")

def ns(n, *cmd):
    return subprocess.run(["ip", "netns", "exec", f"{P}-{n}", *cmd], capture_output=True, text=True).stdout

def named_pids():
    out = {}
    for i in range(4):
        try:
            out[i] = int(open(f"/tmp/exp/named{i}/named.pid").read())
        except Exception:
            pass
    return out

def rcvbuf(i):
    t = ns(f"be{i}", "cat", "/proc/net/snmp").splitlines()
    u = [l for l in t if l.startswith("Udp:")]
    h, v = u[0].split()[1:], list(map(int, u[1].split()[1:]))
    d = dict(zip(h, v))
    return d["RcvbufErrors"], d["InDatagrams"]

def cpustat():
    r = {}
    for l in open("/proc/stat"):
        if re.match(r"cpu\d", l):
            f = l.split(); v = list(map(int, f[1:9]))
            r[f[0]] = dict(user=v[0]+v[1], sys=v[2], idle=v[3]+v[4], irq=v[5], softirq=v[6])
    return r

def softnet():
    rows = []
    for l in open("/proc/net/softnet_stat"):
        f = [int(x, 16) for x in l.split()]
        rows.append(dict(processed=f[0], dropped=f[1], squeeze=f[2], rps=f[9] if len(f) > 9 else 0))
    return rows

def threads_cpu(pid):
    """utime+stime ticks of every thread of pid, and their last CPU."""
    tot, cpus = 0, {}
    for t in glob.glob(f"/proc/{pid}/task/*/stat"):
        try:
            s = open(t).read(); f = s[s.rindex(")")+2:].split()
            ut, st, cpu = int(f[11]), int(f[12]), int(f[36])
            tot += ut + st
            name = open(t.replace("/stat", "/comm")).read().strip()
            cpus[name] = cpus.get(name, 0) + ut + st
        except Exception:
            pass
    return tot, cpus

def pid_cpu(pid):
    s = open(f"/proc/{pid}/stat").read(); f = s[s.rindex(")")+2:].split()
    return int(f[11]) + int(f[12])

pids = named_pids()
samples = {i: [] for i in pids}
stop = threading.Event()
def sampler():
    fds = {i: f"/proc/{p}/net/udp" for i, p in pids.items()}
    while not stop.is_set():
        for i, path in fds.items():
            try:
                for l in open(path).read().splitlines()[1:]:
                    f = l.split()
                    if f[1].endswith(":0035"):
                        rx = int(f[4].split(":")[1], 16)
                        samples[i].append(rx)
            except Exception:
                pass
        time.sleep(0.0005)

r0 = {i: rcvbuf(i) for i in pids}
c0, s0 = cpustat(), softnet()
n0 = {i: threads_cpu(p) for i, p in pids.items()}
mac = ns("node", "cat", "/sys/class/net/eth3/address").strip()
cmd = ["ip", "netns", "exec", f"{P}-client", "kxdpgun", "-t", f"{secs:.3f}", "-Q", str(rate), "-I", "eth0",
       "-l", "198.18.0.0/16", "-R", mac, "-p", "53", "-i", "/tmp/exp/queries.txt", "192.0.2.10"]
th = None
if sample:
    th = threading.Thread(target=sampler, daemon=True); th.start()
capp = []
if cap:
    for i in range(4):
        capp.append(subprocess.Popen(["ip", "netns", "exec", f"{P}-be{i}", "tcpdump", "-i", "eth0", "-c", "20000", "-w",
                    f"/tmp/exp/cap-{label}-{rate}-be{i}.pcap", "--time-stamp-precision=nano", "udp dst port 53"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    time.sleep(1)
t0 = time.time()
kx = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
kpid = kx.pid
time.sleep(1.3)
# kxdpgun threads cpu
out, _ = kx.communicate()
wall = time.time() - t0
stop.set()
for p in capp:
    p.terminate(); p.wait()
time.sleep(0.3)
c1, s1 = cpustat(), softnet()
r1 = {i: rcvbuf(i) for i in pids}
n1 = {i: threads_cpu(p) for i, p in pids.items()}
sent = int(re.findall(r"total queries:\s+(\d+)", out)[-1])
ans = int(re.findall(r"total replies:\s+(\d+)", out)[-1]) if "total replies" in out else 0
res = dict(label=label, rate=rate, sent=sent, answered=ans, loss=(sent-ans)/max(sent,1), wall=wall,
           loadavg=open("/proc/loadavg").read().split()[:3])
res["rcvbuf_errors"] = {i: r1[i][0]-r0[i][0] for i in pids}
res["in_dgrams"] = {i: r1[i][1]-r0[i][1] for i in pids}
percpu = {}
for c in c1:
    d = {k: (c1[c][k]-c0[c][k])/HZ for k in c1[c]}
    percpu[c] = {k: round(v/wall*100, 1) for k, v in d.items()}
res["percpu_pct"] = percpu
res["softnet"] = [{k: s1[j][k]-s0[j][k] for k in s1[j]} for j in range(len(s1))]
res["named_cpu_pct"] = {i: round((n1[i][0]-n0[i][0])/HZ/wall*100, 1) for i in pids}
if sample:
    q = {}
    for i, v in samples.items():
        v = sorted(v)
        if v:
            q[i] = dict(n=len(v), p50=v[len(v)//2], p99=v[int(len(v)*0.99)], max=v[-1])
    res["rxq_bytes"] = q
print(json.dumps(res))

import json, sys
for l in open(sys.argv[1]):
    r = json.loads(l)
    pc = r["percpu_pct"]
    rx = r.get("rxq_bytes", {})
    print(f'{r["label"]:8} {r["rate"]:6} sent {r["sent"]/ (r["wall"]-1.3):7.0f}/s loss {r["loss"]*100:6.2f}% rcvbuf {sum(r["rcvbuf_errors"].values()):6} '
          f'cpu0 u{pc["cpu0"]["user"]:.0f} s{pc["cpu0"]["sys"]:.0f} si{pc["cpu0"]["softirq"]:.0f} i{pc["cpu0"]["idle"]:.0f} | cpu1 u{pc["cpu1"]["user"]:.0f} s{pc["cpu1"]["sys"]:.0f} si{pc["cpu1"]["softirq"]:.0f} i{pc["cpu1"]["idle"]:.0f} '
          f'named% {sum(r["named_cpu_pct"].values()):.0f} sq {[s["squeeze"] for s in r["softnet"]]} proc {[s["processed"] for s in r["softnet"]]} '
          f'rxq99 {[v["p99"]//1000 for v in rx.values()]}k load {r["loadavg"][0]}')

import struct, sys, statistics
def ts(path):
    d = open(path, 'rb').read()
    magic = struct.unpack('<I', d[:4])[0]
    scale = 1e-9 if magic == 0xa1b23c4d else 1e-6
    off, out = 24, []
    while off + 16 <= len(d):
        s, f, incl, orig = struct.unpack('<IIII', d[off:off+16])
        out.append(s + f * scale); off += 16 + incl
    return out
for path in sys.argv[1:]:
    t = ts(path)
    if len(t) < 10: print(path, "few"); continue
    gaps = [(b - a) * 1e6 for a, b in zip(t, t[1:])]
    # bursts: runs of packets with gaps < 5 us
    bursts, cur = [], 1
    for g in gaps:
        if g < 5: cur += 1
        else: bursts.append(cur); cur = 1
    bursts.append(cur)
    gs = sorted(gaps)
    q = lambda p: gs[int(p * (len(gs) - 1))]
    big = sorted(bursts)
    print(f"{path.split('/')[-1]:32} n={len(t)} rate={len(t)/(t[-1]-t[0]):.0f}/s gap p10 {q(.1):.1f} p50 {q(.5):.1f} p90 {q(.9):.1f} p99 {q(.99):.0f} max {gs[-1]:.0f} us; "
          f"bursts(<5us) mean {statistics.mean(bursts):.2f} p99 {big[int(.99*(len(big)-1))]} max {big[-1]}; share in bursts>=8: {sum(b for b in bursts if b>=8)/len(t):.2f}")

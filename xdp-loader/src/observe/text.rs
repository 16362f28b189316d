//! The text form of `dnsteer stats` and `dnsteer backends list`.

use std::{fmt::Write as _, time::Duration};

use super::stats::{BackendDns, HealthStats, KubernetesStats, MapStats, Snapshot};

/// `12.3 MiB`, `4.0 KiB`, `512 B`.
pub fn bytes_text(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / (1u64 << 10) as f64),
        n => format!("{n} B"),
    }
}

/// The backend column's width: enough for an IPv4 backend, more when an IPv6
/// one among `addresses` needs it.
pub fn address_width<'a>(addresses: impl Iterator<Item = &'a str>) -> usize {
    addresses.map(str::len).max().unwrap_or(0).max(22)
}

/// `up 0.4ms (2 transitions)`, `down: no reply within 500ms (1 transition)`.
pub fn health_text(h: &HealthStats) -> String {
    let mut text = h.state.clone();
    match (&h.last_error, h.last_rtt_us) {
        (Some(err), _) => {
            let _ = write!(text, ": {err}");
        }
        (None, Some(us)) => {
            let _ = write!(text, " {:.1}ms", us as f64 / 1000.0);
        }
        (None, None) => {}
    }
    let plural = if h.transitions == 1 { "" } else { "s" };
    let _ = write!(text, " ({} transition{plural})", h.transitions);
    text
}

/// One line on a Kubernetes-fed service's watch.
pub fn kubernetes_text(k: &KubernetesStats) -> String {
    let synced = match k.last_sync_unix_ms {
        Some(ms) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            format!(
                "last sync {:.1}s ago",
                now.saturating_sub(ms) as f64 / 1000.0
            )
        }
        None => "never synced".to_owned(),
    };
    let state = if k.connected {
        "watching".to_owned()
    } else {
        format!(
            "NOT CONNECTED, keeping the last backends ({})",
            k.last_error.as_deref().unwrap_or("no answer yet")
        )
    };
    format!(
        "kubernetes {}: {state}, {synced}, {} endpoints seen, {} watch errors",
        k.source, k.endpoints_seen, k.watch_errors
    )
}

/// The text form. With `previous` (from `--watch`), adds packets per second.
pub fn render(now: &Snapshot, previous: Option<(&Snapshot, Duration)>) -> String {
    let rate = |old: Option<u64>, new: u64| -> String {
        match (previous, old) {
            (Some((_, dt)), Some(old)) if dt.as_secs_f64() > 0.0 => {
                format!(
                    "{:>10.0}/s",
                    new.saturating_sub(old) as f64 / dt.as_secs_f64()
                )
            }
            _ => String::new(),
        }
    };
    let mut s = String::new();
    let state = match (now.running, now.persistent) {
        (true, true) => " (persistent)",
        (true, false) => "",
        (false, true) => " — NO LOADER: the persistent data path steers on its own",
        (false, false) => " — NOT RUNNING, counters from pins left behind",
    };
    let _ = writeln!(s, "dnsteer on {} ({} CPUs){state}", now.interface, now.cpus);
    for (i, svc) in now.services.iter().enumerate() {
        let old = previous.and_then(|(p, _)| p.services.get(i));
        let _ = writeln!(
            s,
            "\nservice {}  {}  select {}  listen {}{}",
            svc.name,
            svc.protocol,
            svc.select,
            svc.listen.join(", "),
            if svc.fail_open {
                "  FAILING OPEN: every backend is down, all take new flows"
            } else {
                ""
            }
        );
        if let Some(k) = &svc.kubernetes {
            let _ = writeln!(s, "  {}", kubernetes_text(k));
        }
        let checked = svc.backends.iter().any(|b| b.health.is_some());
        let w = address_width(svc.backends.iter().map(|b| b.address.as_str()));
        let _ = writeln!(
            s,
            "  {:<w$} {:<8} {:>6} {:>12} {:>14} {:>7} {:>10}{}",
            "backend",
            "state",
            "weight",
            "packets",
            "bytes",
            "share",
            "new flows",
            if checked { "  health" } else { "" }
        );
        for (j, b) in svc.backends.iter().enumerate() {
            let share = if svc.packets == 0 {
                0.0
            } else {
                100.0 * b.packets as f64 / svc.packets as f64
            };
            let old = old.and_then(|o| o.backends.get(j)).map(|o| o.packets);
            let health = match &b.health {
                Some(h) => format!("  {}", health_text(h)),
                None if checked => "  -".to_owned(),
                None => String::new(),
            };
            let _ = writeln!(
                s,
                "  {:<w$} {:<8} {:>6} {:>12} {:>14} {:>6.1}% {:>10}{}{}",
                b.address,
                b.state,
                b.weight,
                b.packets,
                b.bytes,
                share,
                b.new_flows,
                health,
                rate(old, b.packets)
            );
            if b.dns.queries > 0 {
                let _ = writeln!(
                    s,
                    "    {}",
                    dns_text(&b.dns, &now.latency_bucket_le_seconds)
                );
            }
            if let Some(cpus) = &b.per_cpu {
                for (cpu, c) in cpus.iter().enumerate() {
                    let _ = writeln!(
                        s,
                        "    cpu{cpu:<cw$} {:>12} {:>14} {:>18}",
                        c.packets,
                        c.bytes,
                        c.new_flows,
                        cw = w + 12
                    );
                }
            }
        }
        let _ = writeln!(
            s,
            "  {:<tw$} {:>12} {:>14}{}",
            "total",
            svc.packets,
            svc.bytes,
            rate(old.map(|o| o.packets), svc.packets),
            tw = w + 15
        );
        if let Some(k) = svc.sockets.as_ref().filter(|k| k.choices > 0) {
            let _ = writeln!(
                s,
                "  sockets (the node's own clients): {} choices (sendmsg {}, connect udp {}, connect tcp {})",
                k.choices, k.sendmsg, k.connect_udp, k.connect_tcp
            );
            for b in &k.backends {
                let _ = writeln!(
                    s,
                    "    {:<w$} sendmsg {:>10}  connect udp {:>8}  connect tcp {:>8}",
                    b.address, b.sendmsg, b.connect_udp, b.connect_tcp
                );
            }
        }
    }
    let _ = writeln!(s, "\nreasons");
    for (name, count) in &now.reasons {
        let old = previous.and_then(|(p, _)| p.reasons.get(name).copied());
        let _ = write!(s, "  {name:<16} {count:>12}{}", rate(old, *count));
        if let Some(cpus) = now.reasons_per_cpu.as_ref().and_then(|m| m.get(name)) {
            let _ = write!(s, "   per CPU {cpus:?}");
        }
        s.push('\n');
    }
    let f = &now.flows;
    let _ = writeln!(
        s,
        "\nflows  {} of {} records  hits {}  misses {}  expired {}  backend_gone {}  evictions {}  (inserted {}, deleted {})",
        f.entries,
        f.capacity,
        f.hits,
        f.misses,
        f.expired,
        f.backend_gone,
        f.evictions,
        f.inserted,
        f.deleted
    );
    let q = &now.queries;
    let _ = writeln!(
        s,
        "queries  {} in flight of {} (peak {})  answered {}  timed out {}  insert failed {}  (inserted {}, retransmitted {}, fragment unmatched {})",
        q.in_flight,
        q.capacity,
        q.peak_in_flight,
        q.answered,
        q.timed_out,
        q.insert_failed,
        q.inserted,
        q.retransmitted,
        q.fragment_unmatched
    );
    if now.forward.mode == "redirect" {
        let events: Vec<String> = now
            .forward
            .events
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let _ = writeln!(s, "forward redirect  {}", events.join("  "));
    }
    let c = &now.capacity;
    let _ = writeln!(
        s,
        "capacity  services {}  listeners {}  backends/service {}  flow records {}",
        c.services, c.listeners, c.backends_per_service, c.flow_records
    );
    let mut maps: Vec<&MapStats> = now.maps.iter().collect();
    maps.sort_by_key(|m| std::cmp::Reverse(m.memory_bytes));
    let each: Vec<String> = maps
        .iter()
        .map(|m| format!("{} {}", m.name, bytes_text(m.memory_bytes)))
        .collect();
    let _ = writeln!(
        s,
        "memory  {} in {} maps: {}",
        bytes_text(now.memory_bytes),
        now.maps.len(),
        each.join(", ")
    );
    s
}

/// A backend's UDP queries in one line: answers by RCODE, timeouts, in
/// flight, and the latency's mean and the bucket bounds of its median and 99th
/// percentile.
fn dns_text(dns: &BackendDns, bounds: &[f64]) -> String {
    let rcode = |name: &str| dns.rcodes.get(name).copied().unwrap_or(0);
    let mut line = format!(
        "dns  answers {} (servfail {}, nxdomain {}, refused {}, other {})  timeouts {}  in flight {}",
        dns.answers,
        rcode("servfail"),
        rcode("nxdomain"),
        rcode("refused"),
        rcode("other"),
        dns.timeouts,
        dns.in_flight
    );
    if dns.answers > 0 {
        let at = |q: f64| {
            let want = (q * dns.answers as f64).ceil() as u64;
            let mut seen = 0;
            for (k, n) in dns.latency_buckets.iter().enumerate() {
                seen += n;
                if seen >= want {
                    return bounds
                        .get(k)
                        .map_or_else(|| "> 4.3 s".to_owned(), |le| format!("≤ {}", seconds(*le)));
                }
            }
            "?".to_owned()
        };
        let _ = write!(
            line,
            "  latency mean {}, p50 {}, p99 {}",
            seconds(dns.latency_sum_seconds / dns.answers as f64),
            at(0.5),
            at(0.99)
        );
    }
    line
}

/// `512 µs`, `1.05 ms`, `2.1 s`.
fn seconds(s: f64) -> String {
    if s < 1e-3 {
        format!("{:.0} µs", s * 1e6)
    } else if s < 1.0 {
        format!("{:.2} ms", s * 1e3)
    } else {
        format!("{s:.2} s")
    }
}

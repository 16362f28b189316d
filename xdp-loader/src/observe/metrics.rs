//! `dnsteer run --metrics-listen`: the stats as Prometheus metrics on `/metrics`.
//!
//! The counters live in kernel maps, so every scrape asks the run loop for a
//! fresh `stats::Snapshot` and writes it in the Prometheus text format 0.0.4;
//! `http.rs` serves it.

use std::fmt;

use prometheus_client::{
    collector::Collector,
    encoding::{
        DescriptorEncoder, EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet, prometheus_text,
    },
    metrics::{MetricType, TypedMetric, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};
use tokio::sync::oneshot;
use xdp_common::Reason;

pub use super::http::serve;
use super::stats::{BackendStats, Snapshot};

/// The Content-Type header value matching what `encode` writes.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// A scrape: the run loop answers with the body, or an error message (served as 500).
pub type Scrape = oneshot::Sender<Result<String, String>>;

/// The exposition text for `snapshot`.
pub fn encode(snapshot: &Snapshot) -> String {
    let mut registry = Registry::default();
    // A collector writes the snapshot's values as they are and in its order; `Family`s
    // would copy each into an atomic only to read it back, and list series in hash order.
    registry.register_collector(Box::new(SnapshotCollector(snapshot.clone())));
    let mut text = String::new();
    prometheus_text::encode(&mut text, &registry).expect("formatting into a String cannot fail");
    text
}

/// Owns its snapshot because a registered collector must be `'static`.
#[derive(Debug)]
struct SnapshotCollector(Snapshot);

impl Collector for SnapshotCollector {
    fn encode(&self, mut out: DescriptorEncoder) -> fmt::Result {
        let snap = &self.0;
        let out = &mut out;
        let services = || snap.services.iter();
        let backends =
            || services().flat_map(|svc| svc.backends.iter().map(move |b| (svc.name.as_str(), b)));
        let health = || backends().filter_map(|(svc, b)| b.health.as_ref().map(|h| (svc, b, h)));

        // Counter names leave out `_total`: the encoder appends it.
        family(
            out,
            "dnsteer_packets",
            "Packets the XDP and TC programs saw, by what they did with them",
            snap.reasons
                .iter()
                .map(|(reason, &n)| ([("reason", reason.as_str())], ConstCounter::new(n))),
        )?;
        let reason = |r: Reason| snap.reasons.get(r.name()).copied();
        family(
            out,
            "dnsteer_reply_translations",
            "Backend replies on the TC egress path: source rewritten to the service address, no flow record to rewrite it by, or an ICMP error about a steered query rewritten",
            [
                ("rewritten", reason(Reason::ReplyRewritten)),
                ("no_flow", reason(Reason::ReplyNoFlow)),
                ("icmp_rewritten", reason(Reason::IcmpRewritten)),
            ]
            .into_iter()
            .filter_map(|(result, n)| Some(([("result", result)], ConstCounter::new(n?)))),
        )?;

        family(
            out,
            "dnsteer_service_packets",
            "Packets steered to the service's backends",
            services().map(|s| (service_labels(&s.name), ConstCounter::new(s.packets))),
        )?;
        family(
            out,
            "dnsteer_service_bytes",
            "Bytes (whole frames) steered to the service's backends",
            services().map(|s| (service_labels(&s.name), ConstCounter::new(s.bytes))),
        )?;
        family(
            out,
            "dnsteer_service_fail_open",
            "1 when every health-checked backend of the service is down, so all of them take new flows",
            services().map(|s| {
                (
                    service_labels(&s.name),
                    ConstGauge::new(u32::from(s.fail_open)),
                )
            }),
        )?;

        let watched = || services().filter_map(|s| s.kubernetes.as_ref().map(|k| (s, k)));
        family(
            out,
            "dnsteer_kubernetes_connected",
            "1 when the service's Kubernetes watch has a complete list and is not failing; 0 while its backends stay as last seen",
            watched().map(|(s, k)| {
                (
                    service_labels(&s.name),
                    ConstGauge::new(u32::from(k.connected)),
                )
            }),
        )?;
        family(
            out,
            "dnsteer_kubernetes_last_sync_timestamp_seconds",
            "When the Kubernetes API server last sent something about the service (a list or an event), Unix time",
            watched().filter_map(|(s, k)| {
                Some((
                    service_labels(&s.name),
                    ConstGauge::new(k.last_sync_unix_ms? as f64 / 1e3),
                ))
            }),
        )?;
        family(
            out,
            "dnsteer_kubernetes_watch_errors",
            "Failed lists and watches of the service's Kubernetes objects (410 Gone relists included)",
            watched().map(|(s, k)| (service_labels(&s.name), ConstCounter::new(k.watch_errors))),
        )?;
        family(
            out,
            "dnsteer_kubernetes_endpoints_seen",
            "Endpoints in the service's EndpointSlices, whatever their conditions",
            watched().map(|(s, k)| {
                (
                    service_labels(&s.name),
                    ConstGauge::new(k.endpoints_seen as i64),
                )
            }),
        )?;

        family(
            out,
            "dnsteer_backend_packets",
            "Packets steered to the backend",
            backends().map(|(svc, b)| (backend_labels(svc, b), ConstCounter::new(b.packets))),
        )?;
        family(
            out,
            "dnsteer_backend_socket_choices",
            "Times the socket programs chose the backend for a client on the node, by call (sendmsg, connect_udp, connect_tcp)",
            self.0.services.iter().flat_map(|svc| {
                svc.sockets.iter().flat_map(move |k| {
                    k.backends.iter().flat_map(move |b| {
                        [
                            ("sendmsg", b.sendmsg),
                            ("connect_udp", b.connect_udp),
                            ("connect_tcp", b.connect_tcp),
                        ]
                        .into_iter()
                        .map(move |(call, n)| {
                            (
                                [
                                    ("service", svc.name.as_str()),
                                    ("backend", b.address.as_str()),
                                    ("call", call),
                                ],
                                ConstCounter::new(n),
                            )
                        })
                    })
                })
            }),
        )?;
        family(
            out,
            "dnsteer_backend_bytes",
            "Bytes (whole frames) steered to the backend",
            backends().map(|(svc, b)| (backend_labels(svc, b), ConstCounter::new(b.bytes))),
        )?;
        family(
            out,
            "dnsteer_backend_new_flows",
            "Flows that started on the backend",
            backends().map(|(svc, b)| (backend_labels(svc, b), ConstCounter::new(b.new_flows))),
        )?;
        // What each backend did with its UDP queries, as the kernel saw them pass.
        family(
            out,
            "dnsteer_backend_queries",
            "UDP query records written for the backend",
            backends().map(|(svc, b)| (backend_labels(svc, b), ConstCounter::new(b.dns.queries))),
        )?;
        family(
            out,
            "dnsteer_backend_answers",
            "Answers from the backend that found their query, by RCODE (noerror, nxdomain, servfail, refused, other)",
            backends().flat_map(|(svc, b)| {
                b.dns.rcodes.iter().map(move |(rcode, &n)| {
                    (
                        [
                            ("service", svc),
                            ("backend", b.address.as_str()),
                            ("rcode", rcode.as_str()),
                        ],
                        ConstCounter::new(n),
                    )
                })
            }),
        )?;
        family(
            out,
            "dnsteer_backend_query_timeouts",
            "UDP queries the backend did not answer within [flows] query_timeout",
            backends().map(|(svc, b)| (backend_labels(svc, b), ConstCounter::new(b.dns.timeouts))),
        )?;
        family(
            out,
            "dnsteer_backend_queries_in_flight",
            "UDP queries steered to the backend and not answered yet",
            backends().map(|(svc, b)| (backend_labels(svc, b), ConstGauge::new(b.dns.in_flight))),
        )?;
        family(
            out,
            "dnsteer_backend_answer_latency_seconds",
            "Time from a UDP query passing the XDP program to its answer passing the TC program",
            backends().map(|(svc, b)| {
                let bounds = snap.latency_bucket_le_seconds.iter().copied();
                let buckets = bounds
                    .chain([f64::MAX])
                    .zip(b.dns.latency_buckets.iter().copied())
                    .collect();
                (
                    backend_labels(svc, b),
                    ConstHistogram {
                        sum: b.dns.latency_sum_seconds,
                        count: b.dns.answers,
                        buckets,
                    },
                )
            }),
        )?;
        family(
            out,
            "dnsteer_backend_weight",
            "The backend's configured weight",
            backends().map(|(svc, b)| (backend_labels(svc, b), ConstGauge::new(b.weight))),
        )?;
        family(
            out,
            "dnsteer_backend_state",
            "1 for the backend's current state: active, draining, down or removed",
            backends().map(|(svc, b)| {
                let [service, backend] = backend_labels(svc, b);
                (
                    [service, backend, ("state", b.state.as_str())],
                    ConstGauge::new(1u32),
                )
            }),
        )?;

        family(
            out,
            "dnsteer_backend_up",
            "1 when the backend passes its health probes, 0 when it is down",
            health().map(|(svc, b, h)| {
                (
                    backend_labels(svc, b),
                    ConstGauge::new(u32::from(h.state == "up")),
                )
            }),
        )?;
        family(
            out,
            "dnsteer_backend_probe_rtt_seconds",
            "Round trip of the backend's last answered health probe",
            health().filter_map(|(svc, b, h)| {
                Some((
                    backend_labels(svc, b),
                    ConstGauge::new(h.last_rtt_us? as f64 / 1e6),
                ))
            }),
        )?;
        family(
            out,
            "dnsteer_backend_probes",
            "Health probes sent to the backend, by result",
            health().flat_map(|(svc, b, h)| {
                let [service, backend] = backend_labels(svc, b);
                [("ok", h.probes_ok), ("failed", h.probes_failed)].map(|(result, n)| {
                    ([service, backend, ("result", result)], ConstCounter::new(n))
                })
            }),
        )?;
        family(
            out,
            "dnsteer_backend_health_transitions",
            "Changes between up and down since the backend joined",
            health().map(|(svc, b, h)| (backend_labels(svc, b), ConstCounter::new(h.transitions))),
        )?;

        let flows = &snap.flows;
        scalar(
            out,
            "dnsteer_flow_table_entries",
            "Flow records: one per UDP flow (affinity), two per TCP connection",
            ConstGauge::new(flows.entries),
        )?;
        scalar(
            out,
            "dnsteer_flow_table_capacity",
            "Records the flow table holds at most",
            ConstGauge::new(flows.capacity),
        )?;
        family(
            out,
            "dnsteer_flow_events",
            "Flow table lookups by outcome (hit, miss, expired, backend_gone) and records inserted or deleted",
            [
                ("hit", flows.hits),
                ("miss", flows.misses),
                ("expired", flows.expired),
                ("backend_gone", flows.backend_gone),
                ("inserted", flows.inserted),
                ("deleted", flows.deleted),
            ]
            .map(|(event, n)| ([("event", event)], ConstCounter::new(n))),
        )?;
        scalar(
            out,
            "dnsteer_flow_table_evictions",
            "Records the full flow table dropped to make room",
            ConstCounter::new(flows.evictions),
        )?;

        let queries = &snap.queries;
        scalar(
            out,
            "dnsteer_queries_in_flight",
            "UDP queries waiting for their answers (records in the query table)",
            ConstGauge::new(queries.in_flight),
        )?;
        scalar(
            out,
            "dnsteer_queries_peak_in_flight",
            "The most UDP queries in flight at once, sampled every 100 ms",
            ConstGauge::new(queries.peak_in_flight),
        )?;
        scalar(
            out,
            "dnsteer_query_table_capacity",
            "UDP queries in flight the query table holds at most ([flows] size)",
            ConstGauge::new(queries.capacity),
        )?;
        family(
            out,
            "dnsteer_query_events",
            "UDP query records: inserted, answered, retransmitted, timed_out, insert_failed (table full: the answer is lost), fragment_unmatched",
            [
                ("inserted", queries.inserted),
                ("answered", queries.answered),
                ("retransmitted", queries.retransmitted),
                ("timed_out", queries.timed_out),
                ("insert_failed", queries.insert_failed),
                ("fragment_unmatched", queries.fragment_unmatched),
            ]
            .map(|(event, n)| ([("event", event)], ConstCounter::new(n))),
        )?;

        family(
            out,
            "dnsteer_forward_events",
            "What the fast path (forward = \"redirect\") did with steered queries and their replies",
            snap.forward
                .events
                .iter()
                .map(|(event, &n)| ([("event", event.as_str())], ConstCounter::new(n))),
        )?;
        family(
            out,
            "dnsteer_map_capacity_entries",
            "Entries the kernel map holds at most ([limits], [flows] size)",
            snap.maps
                .iter()
                .map(|m| ([("map", m.name.as_str())], ConstGauge::new(m.max_entries))),
        )?;
        family(
            out,
            "dnsteer_map_memory_bytes",
            "Memory the kernel charges for the map, per-CPU copies included",
            snap.maps.iter().map(|m| {
                (
                    [("map", m.name.as_str())],
                    ConstGauge::new(m.memory_bytes as i64),
                )
            }),
        )
    }
}

fn service_labels(name: &str) -> [(&'static str, &str); 1] {
    [("service", name)]
}

fn backend_labels<'a>(service: &'a str, b: &'a BackendStats) -> [(&'static str, &'a str); 2] {
    [("service", service), ("backend", b.address.as_str())]
}

/// A histogram as the kernel counted it: per-bucket counts (the encoder sums
/// them into Prometheus' cumulative ones), the last bucket's bound `f64::MAX`
/// (written `+Inf`).
#[derive(Debug)]
struct ConstHistogram {
    sum: f64,
    count: u64,
    buckets: Vec<(f64, u64)>,
}

impl TypedMetric for ConstHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for ConstHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> fmt::Result {
        encoder.encode_histogram::<NoLabelSet>(self.sum, self.count, &self.buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// Writes one labelled metric family; nothing when it has no series, as `Family` does.
fn family<L, M>(
    out: &mut DescriptorEncoder,
    name: &'static str,
    help: &str,
    series: impl IntoIterator<Item = (L, M)>,
) -> fmt::Result
where
    L: EncodeLabelSet,
    M: EncodeMetric + TypedMetric,
{
    let mut series = series.into_iter().peekable();
    if series.peek().is_none() {
        return Ok(());
    }
    let mut metric = out.encode_descriptor(name, help, None, M::TYPE)?;
    for (labels, value) in series {
        value.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

/// Writes one metric without labels.
fn scalar<M: EncodeMetric + TypedMetric>(
    out: &mut DescriptorEncoder,
    name: &'static str,
    help: &str,
    value: M,
) -> fmt::Result {
    value.encode(out.encode_descriptor(name, help, None, M::TYPE)?)
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use xdp_common::LATENCY_BUCKETS;

    use super::*;
    use crate::observe::{
        read::latency_bounds,
        stats::{BackendDns, FlowStats, HealthStats, ServiceStats},
    };

    const WEIRD: &str = "odd \"svc\" C:\\dir\nline2";

    fn backend(
        address: &str,
        state: &str,
        weight: u32,
        packets: u64,
        health: Option<HealthStats>,
    ) -> BackendStats {
        BackendStats {
            address: address.to_owned(),
            state: state.to_owned(),
            weight,
            packets,
            bytes: packets * 100,
            new_flows: packets / 10,
            health,
            dns: dns(packets),
            per_cpu: None,
        }
    }

    /// `packets` queries, all but one answered: half within the first
    /// bucket, half within the third, and one NXDOMAIN.
    fn dns(packets: u64) -> BackendDns {
        let answers = packets.saturating_sub(1);
        let mut latency_buckets = vec![0; LATENCY_BUCKETS];
        latency_buckets[0] = answers / 2;
        latency_buckets[2] = answers - answers / 2;
        BackendDns {
            queries: packets,
            answers,
            timeouts: 0,
            in_flight: packets - answers,
            rcodes: [
                ("noerror", answers.saturating_sub(1)),
                ("nxdomain", answers.min(1)),
                ("servfail", 0),
                ("refused", 0),
                ("other", 0),
            ]
            .map(|(k, v)| (k.to_owned(), v))
            .into(),
            latency_buckets,
            latency_sum_seconds: answers as f64 * 1e-5,
        }
    }

    fn health(
        state: &str,
        last_rtt_us: Option<u64>,
        transitions: u64,
        ok: u64,
        failed: u64,
    ) -> Option<HealthStats> {
        Some(HealthStats {
            state: state.to_owned(),
            last_rtt_us,
            last_error: (state == "down").then(|| "timed out after 1 s".to_owned()),
            transitions,
            probes_ok: ok,
            probes_failed: failed,
        })
    }

    fn snapshot() -> Snapshot {
        let dns = ServiceStats {
            name: "dns".to_owned(),
            protocol: "udp+tcp".to_owned(),
            select: "nth".to_owned(),
            listen: vec!["10.0.0.100:53".to_owned()],
            packets: 170,
            bytes: 17000,
            fail_open: false,
            kubernetes: None,
            sockets: None,
            backends: vec![
                backend(
                    "10.0.0.1:53",
                    "active",
                    3,
                    120,
                    health("up", Some(1500), 0, 10, 0),
                ),
                backend("10.0.0.2:53", "down", 1, 40, health("down", None, 1, 4, 3)),
                backend("10.0.0.3:53", "removed", 0, 10, None),
            ],
        };
        let weird = ServiceStats {
            name: WEIRD.to_owned(),
            protocol: "udp".to_owned(),
            select: "random".to_owned(),
            listen: vec!["*:5353".to_owned()],
            packets: 5,
            bytes: 500,
            fail_open: true,
            kubernetes: None,
            sockets: None,
            backends: vec![backend(
                "10.0.1.1:5353",
                "down",
                2,
                5,
                health("down", Some(250), 3, 7, 9),
            )],
        };
        let reasons = [
            ("steered", 175),
            ("not_service", 5),
            ("no_backend", 1),
            ("malformed", 2),
            ("fragment", 0),
            ("reply_rewritten", 90),
            ("reply_no_flow", 3),
            ("tcp_no_flow", 4),
        ]
        .map(|(r, n)| (r.to_owned(), n))
        .into();
        Snapshot {
            version: 1,
            interface: "eth0".to_owned(),
            running: true,
            persistent: false,
            forward: Default::default(),
            capacity: Default::default(),
            maps: vec![crate::observe::stats::MapStats {
                name: "FLOWS".to_owned(),
                kind: "lru_hash".to_owned(),
                max_entries: 65536,
                key_size: 16,
                value_size: 16,
                memory_bytes: 5_767_168,
            }],
            memory_bytes: 5_767_168,
            cpus: 2,
            services: vec![dns, weird],
            reasons,
            reasons_per_cpu: None,
            flows: FlowStats {
                capacity: 65536,
                entries: 12,
                hits: 80,
                misses: 20,
                expired: 2,
                backend_gone: 1,
                inserted: 30,
                deleted: 4,
                evictions: 14,
            },
            queries: crate::observe::stats::QueryStats {
                capacity: 65536,
                in_flight: 3,
                peak_in_flight: 40,
                inserted: 100,
                answered: 95,
                retransmitted: 1,
                timed_out: 2,
                insert_failed: 0,
                fragment_unmatched: 0,
            },
            latency_bucket_le_seconds: latency_bounds(),
        }
    }

    #[derive(Debug)]
    struct Sample {
        name: String,
        labels: BTreeMap<String, String>,
        value: f64,
    }

    /// The exposition text, parsed strictly enough that an encoding slip fails a test.
    struct Exposition {
        samples: Vec<Sample>,
        help: BTreeMap<String, String>,
        types: BTreeMap<String, String>,
    }

    impl Exposition {
        fn parse(text: &str) -> Self {
            assert!(text.ends_with('\n'), "no final newline: {text:?}");
            let (mut samples, mut help, mut types) = (Vec::new(), BTreeMap::new(), BTreeMap::new());
            let mut family = None;
            for line in text.lines() {
                if let Some(rest) = line.strip_prefix("# HELP ") {
                    let (name, text) = rest.split_once(' ').expect("HELP name text");
                    assert!(!text.is_empty(), "empty HELP for {name}");
                    assert!(
                        help.insert(name.to_owned(), text.to_owned()).is_none(),
                        "second HELP for {name}"
                    );
                } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                    let (name, kind) = rest.split_once(' ').expect("TYPE name type");
                    assert!(help.contains_key(name), "TYPE before HELP for {name}");
                    assert!(
                        types.insert(name.to_owned(), kind.to_owned()).is_none(),
                        "second TYPE for {name}"
                    );
                    family = Some(name.to_owned());
                } else {
                    let sample = Self::sample(line);
                    // A histogram's samples carry the family's name and a suffix.
                    let name = match family.as_deref().map(|f| types.get(f)) {
                        Some(Some(kind)) if kind == "histogram" => ["_bucket", "_sum", "_count"]
                            .iter()
                            .find_map(|s| sample.name.strip_suffix(s))
                            .unwrap_or(&sample.name),
                        _ => &sample.name,
                    };
                    assert_eq!(
                        family.as_deref(),
                        Some(name),
                        "sample outside its family: {line:?}"
                    );
                    samples.push(sample);
                }
            }
            let mut seen = BTreeSet::new();
            for s in &samples {
                assert!(seen.insert((&s.name, &s.labels)), "duplicate series {s:?}");
            }
            Self {
                samples,
                help,
                types,
            }
        }

        fn sample(line: &str) -> Sample {
            let end = line
                .find(['{', ' '])
                .unwrap_or_else(|| panic!("no value in {line:?}"));
            let (name, mut rest) = line.split_at(end);
            let mut labels = BTreeMap::new();
            if let Some(mut list) = rest.strip_prefix('{') {
                loop {
                    list = list.strip_prefix(',').unwrap_or(list);
                    if let Some(after) = list.strip_prefix('}') {
                        rest = after;
                        break;
                    }
                    let (key, after) = list
                        .split_once("=\"")
                        .unwrap_or_else(|| panic!("expected key=\" in {line:?}"));
                    let mut value = String::new();
                    let mut chars = after.char_indices();
                    let close = loop {
                        match chars
                            .next()
                            .unwrap_or_else(|| panic!("unterminated value in {line:?}"))
                        {
                            (i, '"') => break i,
                            (_, '\\') => match chars.next().map(|(_, c)| c) {
                                Some('\\') => value.push('\\'),
                                Some('"') => value.push('"'),
                                Some('n') => value.push('\n'),
                                other => panic!("bad escape {other:?} in {line:?}"),
                            },
                            (_, c) => value.push(c),
                        }
                    };
                    assert!(
                        labels.insert(key.to_owned(), value).is_none(),
                        "label {key} twice in {line:?}"
                    );
                    list = &after[close + 1..];
                }
            }
            let value = rest
                .strip_prefix(' ')
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("bad value in {line:?}"));
            Sample {
                name: name.to_owned(),
                labels,
                value,
            }
        }

        fn series(&self, name: &str) -> Vec<&Sample> {
            self.samples.iter().filter(|s| s.name == name).collect()
        }

        /// The value of the one series `name{labels}` (exactly those labels).
        fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
            let want: BTreeMap<String, String> = labels
                .iter()
                .map(|&(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
            self.samples
                .iter()
                .find(|s| s.name == name && s.labels == want)
                .unwrap_or_else(|| panic!("no series {name}{want:?} in {:#?}", self.series(name)))
                .value
        }
    }

    fn sb(service: &'static str, backend: &'static str) -> [(&'static str, &'static str); 2] {
        [("service", service), ("backend", backend)]
    }

    #[test]
    fn encode_exposes_every_metric_with_its_labels_and_value() {
        let m = Exposition::parse(&encode(&snapshot()));

        for (reason, n) in [
            ("steered", 175.0),
            ("not_service", 5.0),
            ("no_backend", 1.0),
            ("malformed", 2.0),
            ("fragment", 0.0),
            ("reply_rewritten", 90.0),
            ("reply_no_flow", 3.0),
            ("tcp_no_flow", 4.0),
        ] {
            assert_eq!(
                m.get("dnsteer_packets_total", &[("reason", reason)]),
                n,
                "{reason}"
            );
        }
        assert_eq!(m.series("dnsteer_packets_total").len(), 8);
        assert_eq!(
            m.get(
                "dnsteer_reply_translations_total",
                &[("result", "rewritten")]
            ),
            90.0
        );
        assert_eq!(
            m.get("dnsteer_reply_translations_total", &[("result", "no_flow")]),
            3.0
        );
        assert_eq!(m.series("dnsteer_reply_translations_total").len(), 2);

        for (service, packets, fail_open) in [("dns", 170.0, 0.0), (WEIRD, 5.0, 1.0)] {
            let s = [("service", service)];
            assert_eq!(m.get("dnsteer_service_packets_total", &s), packets);
            assert_eq!(m.get("dnsteer_service_bytes_total", &s), packets * 100.0);
            assert_eq!(m.get("dnsteer_service_fail_open", &s), fail_open);
        }

        let backends = [
            ("dns", "10.0.0.1:53", "active", 3.0, 120.0),
            ("dns", "10.0.0.2:53", "down", 1.0, 40.0),
            ("dns", "10.0.0.3:53", "removed", 0.0, 10.0),
            (WEIRD, "10.0.1.1:5353", "down", 2.0, 5.0),
        ];
        for (service, addr, state, weight, packets) in backends {
            let l = sb(service, addr);
            assert_eq!(
                m.get("dnsteer_backend_packets_total", &l),
                packets,
                "{addr}"
            );
            assert_eq!(
                m.get("dnsteer_backend_bytes_total", &l),
                packets * 100.0,
                "{addr}"
            );
            assert_eq!(
                m.get("dnsteer_backend_new_flows_total", &l),
                (packets / 10.0).floor(),
                "{addr}"
            );
            assert_eq!(m.get("dnsteer_backend_weight", &l), weight, "{addr}");
            let [s, b] = l;
            assert_eq!(
                m.get("dnsteer_backend_state", &[s, b, ("state", state)]),
                1.0,
                "{addr}"
            );
        }
        for name in [
            "dnsteer_backend_packets_total",
            "dnsteer_backend_bytes_total",
            "dnsteer_backend_new_flows_total",
            "dnsteer_backend_weight",
            "dnsteer_backend_state",
        ] {
            assert_eq!(m.series(name).len(), 4, "{name}");
        }

        let dns1 = sb("dns", "10.0.0.1:53");
        let dns2 = sb("dns", "10.0.0.2:53");
        let weird = sb(WEIRD, "10.0.1.1:5353");
        assert_eq!(m.get("dnsteer_backend_up", &dns1), 1.0);
        assert_eq!(m.get("dnsteer_backend_up", &dns2), 0.0);
        assert_eq!(m.get("dnsteer_backend_up", &weird), 0.0);
        assert_eq!(m.get("dnsteer_backend_probe_rtt_seconds", &dns1), 0.0015);
        assert_eq!(m.get("dnsteer_backend_probe_rtt_seconds", &weird), 0.00025);
        assert_eq!(m.series("dnsteer_backend_probe_rtt_seconds").len(), 2);
        for (l, ok, failed, transitions) in [
            (dns1, 10.0, 0.0, 0.0),
            (dns2, 4.0, 3.0, 1.0),
            (weird, 7.0, 9.0, 3.0),
        ] {
            let [s, b] = l;
            assert_eq!(
                m.get("dnsteer_backend_probes_total", &[s, b, ("result", "ok")]),
                ok
            );
            assert_eq!(
                m.get(
                    "dnsteer_backend_probes_total",
                    &[s, b, ("result", "failed")]
                ),
                failed
            );
            assert_eq!(
                m.get("dnsteer_backend_health_transitions_total", &l),
                transitions
            );
        }
        assert_eq!(m.series("dnsteer_backend_probes_total").len(), 6);

        assert_eq!(m.get("dnsteer_flow_table_entries", &[]), 12.0);
        assert_eq!(m.get("dnsteer_flow_table_capacity", &[]), 65536.0);
        assert_eq!(m.get("dnsteer_flow_table_evictions_total", &[]), 14.0);
        assert_eq!(
            m.get("dnsteer_map_capacity_entries", &[("map", "FLOWS")]),
            65536.0
        );
        assert_eq!(
            m.get("dnsteer_map_memory_bytes", &[("map", "FLOWS")]),
            5_767_168.0
        );
        for (event, n) in [
            ("hit", 80.0),
            ("miss", 20.0),
            ("expired", 2.0),
            ("backend_gone", 1.0),
            ("inserted", 30.0),
            ("deleted", 4.0),
        ] {
            assert_eq!(
                m.get("dnsteer_flow_events_total", &[("event", event)]),
                n,
                "{event}"
            );
        }
        assert_eq!(m.series("dnsteer_flow_events_total").len(), 6);
    }

    #[test]
    fn encode_writes_help_and_type_for_every_family() {
        let m = Exposition::parse(&encode(&snapshot()));
        let expected: BTreeMap<&str, &str> = [
            ("dnsteer_backend_packets_total", "counter"),
            ("dnsteer_backend_bytes_total", "counter"),
            ("dnsteer_backend_new_flows_total", "counter"),
            ("dnsteer_backend_weight", "gauge"),
            ("dnsteer_backend_state", "gauge"),
            ("dnsteer_backend_up", "gauge"),
            ("dnsteer_backend_probe_rtt_seconds", "gauge"),
            ("dnsteer_backend_probes_total", "counter"),
            ("dnsteer_backend_health_transitions_total", "counter"),
            ("dnsteer_service_fail_open", "gauge"),
            ("dnsteer_service_packets_total", "counter"),
            ("dnsteer_service_bytes_total", "counter"),
            ("dnsteer_packets_total", "counter"),
            ("dnsteer_reply_translations_total", "counter"),
            ("dnsteer_flow_table_entries", "gauge"),
            ("dnsteer_flow_table_capacity", "gauge"),
            ("dnsteer_flow_events_total", "counter"),
            ("dnsteer_flow_table_evictions_total", "counter"),
            ("dnsteer_backend_queries_total", "counter"),
            ("dnsteer_backend_answers_total", "counter"),
            ("dnsteer_backend_query_timeouts_total", "counter"),
            ("dnsteer_backend_queries_in_flight", "gauge"),
            ("dnsteer_backend_answer_latency_seconds", "histogram"),
            ("dnsteer_queries_in_flight", "gauge"),
            ("dnsteer_queries_peak_in_flight", "gauge"),
            ("dnsteer_query_table_capacity", "gauge"),
            ("dnsteer_query_events_total", "counter"),
            ("dnsteer_map_capacity_entries", "gauge"),
            ("dnsteer_map_memory_bytes", "gauge"),
        ]
        .into();
        let types: BTreeMap<&str, &str> = m
            .types
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(types, expected);
        assert_eq!(
            m.help.keys().collect::<Vec<_>>(),
            m.types.keys().collect::<Vec<_>>()
        );
        for (name, kind) in &expected {
            // A histogram's series are its buckets.
            let series = match *kind {
                "histogram" => format!("{name}_bucket"),
                _ => (*name).to_owned(),
            };
            assert!(!m.series(&series).is_empty(), "{name} has no series");
        }
    }

    #[test]
    fn answer_latency_is_a_cumulative_histogram_of_the_kernel_buckets() {
        let snap = snapshot();
        let m = Exposition::parse(&encode(&snap));
        let b = &snap.services[0].backends[0];
        let (service, backend) = (snap.services[0].name.as_str(), b.address.as_str());
        // Bucket bounds as the encoder writes them; read back as numbers.
        let bucket = |le: f64| {
            m.samples
                .iter()
                .find(|s| {
                    s.name == "dnsteer_backend_answer_latency_seconds_bucket"
                        && s.labels.get("service").map(String::as_str) == Some(service)
                        && s.labels.get("backend").map(String::as_str) == Some(backend)
                        && s.labels.get("le").map(|v| {
                            if v == "+Inf" {
                                f64::INFINITY
                            } else {
                                v.parse().unwrap()
                            }
                        }) == Some(le)
                })
                .unwrap_or_else(|| panic!("no bucket le={le}"))
                .value
        };
        let bounds = latency_bounds();
        assert_eq!(bounds.len(), LATENCY_BUCKETS - 1);
        assert_eq!(bounds[0], 16.384e-6);
        let (first, third) = (b.dns.latency_buckets[0], b.dns.latency_buckets[2]);
        assert_eq!(bucket(bounds[0]), first as f64);
        assert_eq!(bucket(bounds[1]), first as f64, "cumulative");
        assert_eq!(bucket(bounds[2]), (first + third) as f64);
        assert_eq!(bucket(f64::INFINITY), b.dns.answers as f64);
        let l = [("service", service), ("backend", backend)];
        assert_eq!(
            m.get("dnsteer_backend_answer_latency_seconds_count", &l),
            b.dns.answers as f64
        );
        assert!(
            (m.get("dnsteer_backend_answer_latency_seconds_sum", &l) - b.dns.latency_sum_seconds)
                .abs()
                < 1e-9
        );
    }

    #[test]
    fn encode_escapes_label_values() {
        let text = encode(&snapshot());
        let line = text
            .lines()
            .find(|l| l.starts_with("dnsteer_service_fail_open{") && l.contains("odd"))
            .expect("the odd service's fail_open line");
        assert_eq!(
            line,
            r#"dnsteer_service_fail_open{service="odd \"svc\" C:\\dir\nline2"} 1"#
        );
        let m = Exposition::parse(&text);
        assert_eq!(
            m.get("dnsteer_service_fail_open", &[("service", WEIRD)]),
            1.0
        );
        assert_eq!(
            m.get("dnsteer_backend_up", &sb(WEIRD, "10.0.1.1:5353")),
            0.0
        );
    }

    #[test]
    fn encode_leaves_out_health_series_without_health() {
        let m = Exposition::parse(&encode(&snapshot()));
        for name in [
            "dnsteer_backend_up",
            "dnsteer_backend_probe_rtt_seconds",
            "dnsteer_backend_probes_total",
            "dnsteer_backend_health_transitions_total",
        ] {
            let removed: Vec<_> = m
                .series(name)
                .into_iter()
                .filter(|s| s.labels["backend"] == "10.0.0.3:53")
                .collect();
            assert!(
                removed.is_empty(),
                "{name} for a backend without health: {removed:?}"
            );
        }
        assert_eq!(m.series("dnsteer_backend_up").len(), 3);
        // Down with no answered probe yet: no round trip to report.
        assert!(
            m.series("dnsteer_backend_probe_rtt_seconds")
                .iter()
                .all(|s| s.labels["backend"] != "10.0.0.2:53")
        );

        // Without any health checks the families are left out whole.
        let mut bare = snapshot();
        bare.services
            .iter_mut()
            .flat_map(|s| &mut s.backends)
            .for_each(|b| b.health = None);
        let m = Exposition::parse(&encode(&bare));
        assert!(!m.types.contains_key("dnsteer_backend_up"));
        assert_eq!(m.series("dnsteer_backend_packets_total").len(), 4);
    }
}

//! `dnsteer run --metrics-listen`: the stats as Prometheus metrics on `/metrics`.
//!
//! The counters live in kernel maps, so every scrape asks the run loop for a
//! fresh `stats::Snapshot` and writes it in the Prometheus text format 0.0.4.
//! The HTTP side is hand-written on tokio: one request per connection, then close.

use std::{fmt, io, net::SocketAddr, time::Duration};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, prometheus_text},
    metrics::{TypedMetric, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::{mpsc, oneshot},
    task::JoinSet,
    time::timeout,
};
use xdp_common::Reason;

use crate::stats::{BackendStats, Snapshot};

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

        family(
            out,
            "dnsteer_backend_packets",
            "Packets steered to the backend",
            backends().map(|(svc, b)| (backend_labels(svc, b), ConstCounter::new(b.packets))),
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

/// How long a client may take to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest request head read; Prometheus sends a few hundred bytes.
const MAX_HEAD: usize = 8 * 1024;
/// How long a scrape waits for the run loop (Prometheus gives up after 10 s by default).
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the client gets to take the response.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long unread request bytes are drained after the response (see `send`).
const LINGER: Duration = Duration::from_secs(2);

const OK: &str = "200 OK";
const BAD_REQUEST: &str = "400 Bad Request";
const NOT_FOUND: &str = "404 Not Found";
const METHOD_NOT_ALLOWED: &str = "405 Method Not Allowed";
const HEAD_TOO_LARGE: &str = "431 Request Header Fields Too Large";
const INTERNAL_ERROR: &str = "500 Internal Server Error";
const VERSION_NOT_SUPPORTED: &str = "505 HTTP Version Not Supported";

/// Serves GET /metrics on `listener` until the task is dropped/aborted; each scrape
/// sends a `Scrape` on `scrapes` and waits for the answer.
pub async fn serve(listener: TcpListener, scrapes: mpsc::Sender<Scrape>) {
    serve_with(listener, scrapes, HEAD_TIMEOUT).await;
}

/// `serve` with the head time limit as a parameter, so a test need not wait 5 s.
async fn serve_with(listener: TcpListener, scrapes: mpsc::Sender<Scrape>, head_timeout: Duration) {
    let addr = listener
        .local_addr()
        .map_or_else(|_| "the metrics address".to_owned(), |a| a.to_string());
    // Connections live in the set so that dropping `serve` ends them too.
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        match listener.accept().await {
            Ok((stream, peer)) => {
                connections.spawn(connection(stream, peer, scrapes.clone(), head_timeout));
            }
            Err(err) if out_of_resources(&err) => {
                log::warn!(
                    "metrics: accepting a connection on {addr} failed: {err}; retrying in 100 ms (raise the open-files limit, `ulimit -n`, if this repeats)"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) => log::warn!("metrics: accepting a connection on {addr} failed: {err}"),
        }
    }
}

/// Accept errors that last until something else frees resources; retrying at once would spin.
fn out_of_resources(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Answers one request on `stream`, then closes it.
async fn connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    scrapes: mpsc::Sender<Scrape>,
    head_timeout: Duration,
) {
    let head = match timeout(head_timeout, read_head(&mut stream)).await {
        Ok(Ok(head)) => head,
        Ok(Err(err)) => {
            log::debug!("metrics: reading a request from {peer}: {err}");
            return;
        }
        // A client this slow is not waiting for an answer.
        Err(_) => {
            log::debug!("metrics: {peer} sent no complete request within {head_timeout:?}");
            return;
        }
    };
    let (reply, head_only) = match head {
        Head::Closed => return,
        Head::Incomplete => (
            Reply::text(
                BAD_REQUEST,
                "the request ended before the blank line that ends its head",
            ),
            false,
        ),
        Head::TooLarge => (
            Reply::text(
                HEAD_TOO_LARGE,
                format!("the request head is over {MAX_HEAD} bytes; /metrics needs no headers"),
            ),
            false,
        ),
        Head::Complete(bytes) => match request_line(&bytes) {
            Ok(request) => (route(&request, &scrapes).await, request.method == "HEAD"),
            Err(reply) => (reply, false),
        },
    };
    send(stream, &reply.to_bytes(head_only)).await;
}

/// What `read_head` found.
enum Head {
    /// The head up to, not including, the blank line.
    Complete(Vec<u8>),
    /// No blank line within `MAX_HEAD` bytes.
    TooLarge,
    /// The client closed after sending part of a head.
    Incomplete,
    /// The client closed without sending anything (a port check).
    Closed,
}

async fn read_head(stream: &mut TcpStream) -> io::Result<Head> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = head_end(&head) {
            head.truncate(end);
            return Ok(Head::Complete(head));
        }
        if head.len() >= MAX_HEAD {
            return Ok(Head::TooLarge);
        }
        let room = chunk.len().min(MAX_HEAD - head.len());
        let n = stream.read(&mut chunk[..room]).await?;
        if n == 0 {
            return Ok(if head.is_empty() {
                Head::Closed
            } else {
                Head::Incomplete
            });
        }
        head.extend_from_slice(&chunk[..n]);
    }
}

/// Where the blank line ending a head starts; bare LF line ends are accepted too (RFC 9112 §2.2).
fn head_end(bytes: &[u8]) -> Option<usize> {
    let crlf = bytes.windows(4).position(|w| w == b"\r\n\r\n");
    let lf = bytes.windows(2).position(|w| w == b"\n\n");
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The parts of a request line that pick the answer.
struct RequestLine<'a> {
    method: &'a str,
    /// The target without its query string.
    path: &'a str,
}

fn request_line(head: &[u8]) -> Result<RequestLine<'_>, Reply> {
    let bad = || {
        Reply::text(
            BAD_REQUEST,
            "expected an HTTP request line such as `GET /metrics HTTP/1.1`",
        )
    };
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let line = std::str::from_utf8(line).map_err(|_| bad())?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    if method.is_empty() || !method.bytes().all(is_token_byte) {
        return Err(bad());
    }
    match version {
        "HTTP/1.0" | "HTTP/1.1" => {}
        v if v.starts_with("HTTP/") => {
            return Err(Reply::text(
                VERSION_NOT_SUPPORTED,
                "this server speaks HTTP/1.0 and HTTP/1.1",
            ));
        }
        _ => return Err(bad()),
    }
    // Servers must accept the absolute form (RFC 9112 §3.2.2), though only proxies need it.
    let target = match target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))
    {
        Some(rest) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => target,
    };
    if !target.starts_with('/') {
        return Err(bad());
    }
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    Ok(RequestLine { method, path })
}

/// A `tchar` of RFC 9110 §5.6.2, the bytes a method may have.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

async fn route(request: &RequestLine<'_>, scrapes: &mpsc::Sender<Scrape>) -> Reply {
    if request.path != "/metrics" {
        return Reply::text(NOT_FOUND, "dnsteer serves its metrics on /metrics only");
    }
    match request.method {
        "GET" | "HEAD" => scrape(scrapes).await,
        _ => Reply {
            allow: true,
            ..Reply::text(METHOD_NOT_ALLOWED, "/metrics answers GET and HEAD")
        },
    }
}

/// Asks the run loop for the exposition text.
async fn scrape(scrapes: &mpsc::Sender<Scrape>) -> Reply {
    let (answer, answered) = oneshot::channel();
    let asked = timeout(SCRAPE_TIMEOUT, async {
        scrapes.send(answer).await.ok()?;
        answered.await.ok()
    })
    .await;
    match asked {
        Ok(Some(Ok(body))) => Reply {
            status: OK,
            content_type: CONTENT_TYPE,
            body,
            allow: false,
        },
        Ok(Some(Err(message))) => Reply::text(INTERNAL_ERROR, message),
        Ok(None) => Reply::text(
            INTERNAL_ERROR,
            "dnsteer is shutting down and no longer reads its stats",
        ),
        Err(_) => {
            log::warn!(
                "metrics: the run loop did not answer a scrape within {SCRAPE_TIMEOUT:?}; is it stuck on a map operation?"
            );
            Reply::text(
                INTERNAL_ERROR,
                format!("dnsteer did not read its stats within {SCRAPE_TIMEOUT:?}; see its log"),
            )
        }
    }
}

/// A response; the connection closes after it.
struct Reply {
    status: &'static str,
    content_type: &'static str,
    body: String,
    /// Adds the `Allow` header a 405 must carry.
    allow: bool,
}

impl Reply {
    fn text(status: &'static str, message: impl Into<String>) -> Self {
        let mut body = message.into();
        if !body.ends_with('\n') {
            body.push('\n');
        }
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            body,
            allow: false,
        }
    }

    /// The response's bytes; a HEAD response has GET's headers and no body.
    fn to_bytes(&self, head_only: bool) -> Vec<u8> {
        let mut head = format!(
            "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.status,
            self.content_type,
            self.body.len()
        );
        if self.allow {
            head.push_str("Allow: GET, HEAD\r\n");
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        if !head_only {
            bytes.extend_from_slice(self.body.as_bytes());
        }
        bytes
    }
}

/// Writes `response` and closes the connection.
async fn send(mut stream: TcpStream, response: &[u8]) {
    let sent = timeout(WRITE_TIMEOUT, async {
        stream.write_all(response).await?;
        stream.shutdown().await
    })
    .await;
    if !matches!(sent, Ok(Ok(()))) {
        return;
    }
    // Closing with unread bytes (the rest of an oversized head) sends a reset, which can
    // destroy the response before the client reads it; drain until the client closes.
    let mut sink = [0u8; 4096];
    let _ = timeout(LINGER, async {
        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}

#[cfg(test)]
mod tests {
    use std::{
        collections::{BTreeMap, BTreeSet},
        time::Instant,
    };

    use super::*;
    use crate::stats::{FlowStats, HealthStats, ServiceStats};

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
            per_cpu: None,
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
            maps: vec![crate::stats::MapStats {
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
            queries: crate::stats::QueryStats {
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
                    assert_eq!(
                        family.as_deref(),
                        Some(sample.name.as_str()),
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
        for name in expected.keys() {
            assert!(!m.series(name).is_empty(), "{name} has no series");
        }
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

    /// A parsed HTTP response.
    #[derive(Debug)]
    struct Answer {
        status: u16,
        headers: BTreeMap<String, String>,
        body: Vec<u8>,
    }

    async fn exchange(addr: SocketAddr, request: &[u8]) -> Answer {
        exchange_closing(addr, request, false).await
    }

    /// Sends `request` (then ends the sending side for `half_close`) and reads the answer.
    async fn exchange_closing(addr: SocketAddr, request: &[u8], half_close: bool) -> Answer {
        let mut stream = TcpStream::connect(addr)
            .await
            .expect("connecting to the metrics server");
        stream
            .write_all(request)
            .await
            .expect("sending the request");
        if half_close {
            stream.shutdown().await.expect("closing the sending side");
        }
        let mut raw = Vec::new();
        timeout(Duration::from_secs(5), stream.read_to_end(&mut raw))
            .await
            .expect("an answer within 5 s")
            .expect("reading the answer");
        let end = head_end(&raw)
            .unwrap_or_else(|| panic!("no head in {:?}", String::from_utf8_lossy(&raw)));
        let head = std::str::from_utf8(&raw[..end]).expect("an ASCII head");
        let mut lines = head.split("\r\n");
        let status_line = lines.next().expect("a status line");
        let status = status_line
            .strip_prefix("HTTP/1.1 ")
            .and_then(|s| s.get(..3))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let headers = lines
            .map(|l| {
                let (k, v) = l
                    .split_once(": ")
                    .unwrap_or_else(|| panic!("bad header {l:?}"));
                (k.to_ascii_lowercase(), v.to_owned())
            })
            .collect();
        Answer {
            status,
            headers,
            body: raw[end + 4..].to_vec(),
        }
    }

    /// Starts `serve` with a fake run loop that answers every scrape with `answer`,
    /// or with no run loop at all for `None`.
    async fn start(answer: Option<Result<String, String>>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding 127.0.0.1:0");
        let addr = listener.local_addr().expect("the bound address");
        let (scrapes, mut asked) = mpsc::channel::<Scrape>(1);
        match answer {
            Some(answer) => {
                tokio::spawn(async move {
                    while let Some(scrape) = asked.recv().await {
                        let _ = scrape.send(answer.clone());
                    }
                });
            }
            None => drop(asked),
        }
        tokio::spawn(serve(listener, scrapes));
        addr
    }

    #[tokio::test]
    async fn serve_answers_get_with_the_run_loops_body() {
        let body = encode(&snapshot());
        let addr = start(Some(Ok(body.clone()))).await;
        for request in [
            "GET /metrics HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n",
            "GET /metrics HTTP/1.0\r\n\r\n",
            "GET /metrics?name[]=up HTTP/1.1\r\nHost: localhost\r\n\r\n",
            "GET http://localhost:9153/metrics HTTP/1.1\r\nHost: localhost\r\n\r\n",
            "GET /metrics HTTP/1.1\nHost: localhost\n\n",
        ] {
            let answer = exchange(addr, request.as_bytes()).await;
            assert_eq!(answer.status, 200, "{request:?}");
            assert_eq!(
                answer.headers["content-type"],
                "text/plain; version=0.0.4; charset=utf-8"
            );
            assert_eq!(answer.headers["content-length"], body.len().to_string());
            assert_eq!(answer.headers["connection"], "close");
            assert_eq!(
                String::from_utf8(answer.body).expect("UTF-8"),
                body,
                "{request:?}"
            );
        }
    }

    #[tokio::test]
    async fn serve_head_has_headers_and_no_body() {
        let body = encode(&snapshot());
        let addr = start(Some(Ok(body.clone()))).await;
        let answer = exchange(addr, b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.headers["content-type"], CONTENT_TYPE);
        assert_eq!(answer.headers["content-length"], body.len().to_string());
        assert!(answer.body.is_empty(), "HEAD got a body: {:?}", answer.body);
    }

    #[tokio::test]
    async fn serve_rejects_other_paths_methods_and_garbage() {
        let addr = start(Some(Ok("unused\n".to_owned()))).await;

        let answer = exchange(addr, b"GET /other HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(answer.status, 404);
        assert!(
            String::from_utf8_lossy(&answer.body).contains("/metrics"),
            "{answer:?}"
        );
        assert_eq!(
            answer.headers["content-length"],
            answer.body.len().to_string()
        );
        assert_eq!(
            exchange(addr, b"GET /metricsx HTTP/1.1\r\n\r\n")
                .await
                .status,
            404
        );

        let answer = exchange(
            addr,
            b"POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
        )
        .await;
        assert_eq!(answer.status, 405);
        assert_eq!(answer.headers["allow"], "GET, HEAD");
        assert_eq!(answer.headers["connection"], "close");

        for garbage in [
            &b"garbage\r\n\r\n"[..],
            b"GET /metrics\r\n\r\n",
            b"GET metrics HTTP/1.1\r\n\r\n",
            b"GET /metrics FTP/1.0\r\n\r\n",
            b"GET  /metrics HTTP/1.1\r\n\r\n",
            b"G\xffT /metrics HTTP/1.1\r\n\r\n",
        ] {
            let answer = exchange(addr, garbage).await;
            assert_eq!(answer.status, 400, "{:?}", String::from_utf8_lossy(garbage));
        }
        // The client stopped sending before the blank line.
        let answer = exchange_closing(addr, b"GET /metrics HTTP/1.1\r\n", true).await;
        assert_eq!(answer.status, 400);
        assert_eq!(
            exchange(addr, b"GET /metrics HTTP/2.0\r\n\r\n")
                .await
                .status,
            505
        );
    }

    #[tokio::test]
    async fn serve_turns_run_loop_errors_into_500() {
        let addr = start(Some(Err(
            "reading BACKEND_STATS: Operation not permitted".to_owned()
        )))
        .await;
        let answer = exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n").await;
        assert_eq!(answer.status, 500);
        assert_eq!(
            answer.body,
            b"reading BACKEND_STATS: Operation not permitted\n"
        );
        assert_eq!(answer.headers["content-type"], "text/plain; charset=utf-8");

        let addr = start(None).await;
        let answer = exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n").await;
        assert_eq!(answer.status, 500);
        assert!(
            String::from_utf8_lossy(&answer.body).contains("shutting down"),
            "{answer:?}"
        );
    }

    #[tokio::test]
    async fn serve_survives_an_oversized_head() {
        let addr = start(Some(Ok("x 1\n".to_owned()))).await;
        let mut big = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Filler: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', 2 * MAX_HEAD));
        big.extend_from_slice(b"\r\n\r\n");
        assert_eq!(exchange(addr, &big).await.status, 431);

        let answer = exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n").await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.body, b"x 1\n");
    }

    #[tokio::test]
    async fn serve_closes_a_silent_connection() {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding 127.0.0.1:0");
        let addr = listener.local_addr().expect("the bound address");
        let (scrapes, mut asked) = mpsc::channel::<Scrape>(1);
        tokio::spawn(async move {
            while let Some(scrape) = asked.recv().await {
                let _ = scrape.send(Ok("x 1\n".to_owned()));
            }
        });
        tokio::spawn(serve_with(listener, scrapes, Duration::from_millis(300)));

        let started = Instant::now();
        let mut stream = TcpStream::connect(addr).await.expect("connecting");
        stream
            .write_all(b"GET /metr")
            .await
            .expect("sending half a request line");
        let mut rest = Vec::new();
        let n = timeout(Duration::from_secs(5), stream.read_to_end(&mut rest))
            .await
            .expect("the server closes within 5 s")
            .expect("a clean close");
        assert_eq!(n, 0, "got {:?}", String::from_utf8_lossy(&rest));
        assert!(
            started.elapsed() >= Duration::from_millis(300),
            "closed after {:?}",
            started.elapsed()
        );

        assert_eq!(
            exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n")
                .await
                .status,
            200
        );
    }
}

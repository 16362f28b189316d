//! A DNS client for tests: a load generator, a single-query probe and the real `kdig`.
//!
//! Messages are built and parsed with hickory-proto, so a malformed answer from the
//! load balancer shows up as a parse error, not as a mistake in our own encoder.

use std::{
    collections::BTreeMap,
    fmt,
    io::ErrorKind,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    process::Stdio,
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use hickory_proto::{
    op::{Message, MessageType, Query, ResponseCode},
    rr::{Name, RData, RecordType},
};

use crate::{netns::NetNs, tools::command_line};

/// What happened to the queries of one [`query_load`]. Every query lands in exactly one
/// of `answered`, `unanswered`, `wrong_source` and `other_errors`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// A valid NOERROR reply came from the address and port the query was sent to.
    pub answered: usize,
    /// Nothing came back within the timeout.
    pub unanswered: usize,
    /// A reply came from an address or port other than the one asked.
    pub wrong_source: usize,
    /// Count per A-record value over all answered queries.
    pub by_answer: BTreeMap<Ipv4Addr, usize>,
    /// Bad id, question mismatch, not a response, parse error, or rcode != NOERROR.
    pub other_errors: usize,
}

impl Outcome {
    /// All queries accounted for.
    pub fn total(&self) -> usize {
        self.answered + self.unanswered + self.wrong_source + self.other_errors
    }

    fn merge(&mut self, other: Outcome) {
        self.answered += other.answered;
        self.unanswered += other.unanswered;
        self.wrong_source += other.wrong_source;
        self.other_errors += other.other_errors;
        for (addr, n) in other.by_answer {
            *self.by_answer.entry(addr).or_default() += n;
        }
    }

    fn record(&mut self, verdict: Verdict) {
        match verdict {
            Verdict::Answered(addrs) => {
                self.answered += 1;
                for addr in addrs {
                    *self.by_answer.entry(addr).or_default() += 1;
                }
            }
            Verdict::Unanswered => self.unanswered += 1,
            Verdict::WrongSource(_) => self.wrong_source += 1,
            Verdict::Error(_) => self.other_errors += 1,
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} answered, {} unanswered, {} wrong source, {} other errors; answers:",
            self.answered, self.unanswered, self.wrong_source, self.other_errors
        )?;
        for (addr, n) in &self.by_answer {
            write!(f, " {addr}={n}")?;
        }
        Ok(())
    }
}

/// A batch of A queries for [`query_load`].
#[derive(Debug, Clone)]
pub struct Load {
    /// Query `i` goes to `targets[i % targets.len()]`.
    pub targets: Vec<SocketAddr>,
    pub name: String,
    pub count: usize,
    /// Worker threads, each in the namespace, each with one query in flight.
    pub concurrency: usize,
    /// Per query; there are no retries.
    pub timeout: Duration,
}

impl Load {
    /// `count` queries for `name` over `targets`, 8 at a time, 2 s timeout each.
    pub fn new(targets: Vec<SocketAddr>, name: &str, count: usize) -> Self {
        Self {
            targets,
            name: name.to_owned(),
            count,
            concurrency: 8,
            timeout: Duration::from_secs(2),
        }
    }
}

/// Sends `load.count` A queries from `ns`, each from a fresh UDP socket (so a fresh
/// ephemeral source port, as independent clients would), and classifies every reply.
///
/// Errors only for a bad `load` or a local socket failure, never for what the network
/// or server did: that is what [`Outcome`] counts.
pub fn query_load(ns: &NetNs, load: &Load) -> Result<Outcome> {
    ensure!(!load.targets.is_empty(), "Load.targets is empty");
    ensure!(load.concurrency > 0, "Load.concurrency must be at least 1");
    let name = parse_name(&load.name)?;
    let next = AtomicUsize::new(0);
    let workers = load.concurrency.min(load.count).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| -> Result<Outcome> {
                    // Each worker joins the namespace itself: NetNs::enter's thread is
                    // only one thread, and these must run in parallel.
                    ns.setns_current_thread()?;
                    let mut outcome = Outcome::default();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= load.count {
                            return Ok(outcome);
                        }
                        let target = load.targets[i % load.targets.len()];
                        outcome.record(query(target, &name, load.timeout)?);
                    }
                })
            })
            .collect();
        let mut total = Outcome::default();
        for handle in handles {
            match handle.join() {
                Ok(result) => total.merge(result?),
                Err(payload) => std::panic::resume_unwind(payload),
            }
        }
        Ok(total)
    })
}

/// One A query from `ns`: `Ok(Some(first A record))`, `Ok(None)` if nothing came back
/// within `timeout`, Err for any other reply (wrong source, error rcode, no A record).
pub fn query_once(
    ns: &NetNs,
    target: SocketAddr,
    name: &str,
    timeout: Duration,
) -> Result<Option<Ipv4Addr>> {
    let qname = parse_name(name)?;
    match ns.enter(|| query(target, &qname, timeout))? {
        Verdict::Answered(addrs) => match addrs.first() {
            Some(addr) => Ok(Some(*addr)),
            None => bail!("{target} answered {name} A without an A record"),
        },
        Verdict::Unanswered => Ok(None),
        Verdict::WrongSource(from) => {
            bail!("query for {name} to {target} was answered from {from}")
        }
        Verdict::Error(why) => bail!("query for {name} to {target}: {why}"),
    }
}

/// Runs `kdig @<ip> -p <port> +short +timeout=2 +retry=0 <name> A` in `ns` and returns the
/// A records it printed (other lines, such as CNAME targets, are skipped). These are
/// kdig's spellings of dig's `+time=2 +tries=1`, which kdig 3.2 rejects. A timeout is an
/// error (kdig exits non-zero).
pub fn kdig(ns: &NetNs, target: SocketAddr, name: &str) -> Result<Vec<Ipv4Addr>> {
    let server = format!("@{}", target.ip());
    let port = target.port().to_string();
    let out = ns.run(&[
        "kdig",
        &server,
        "-p",
        &port,
        "+short",
        "+timeout=2",
        "+retry=0",
        name,
        "A",
    ])?;
    Ok(out
        .lines()
        .filter_map(|line| line.trim().parse().ok())
        .collect())
}

/// How the reply kdig printed reached it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// One reply as kdig printed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KdigReply {
    /// The server address of kdig's `;; From 192.0.2.10@53(TCP) in 0.3 ms` line.
    pub from: SocketAddr,
    /// The transport of that line: TCP also when kdig retried a truncated UDP answer.
    pub transport: Transport,
    /// The header's status, as kdig spells it: "NOERROR", "NXDOMAIN", "REFUSED", ...
    pub rcode: String,
    /// The rdata of every answer record of the queried type (all of them for ANY), in
    /// kdig's order: A and AAAA as addresses; TXT unquoted and unescaped, the
    /// character-strings of one record joined without a separator.
    pub records: Vec<String>,
}

/// Runs `kdig @<ip> -p <port> +timeout=2 +retry=0 <extra...> <name> <rtype>` in `ns` and
/// parses the one reply it prints. `extra` is for transport and EDNS options (`+tcp`,
/// `+ignore`, `+bufsize=N`); options that change the output format (`+short`, `+json`,
/// `+multiline`, `+noall`) leave nothing to parse.
///
/// Without `+tcp` kdig sends no EDNS, so a UDP answer over 512 bytes comes back truncated
/// and kdig asks again over TCP by itself (unless `+ignore`); `transport` then says Tcp.
/// Errors, with kdig's full output, when kdig fails (no reply within 2 s) or prints no
/// single header and `;; From` line.
pub fn kdig_query(
    ns: &NetNs,
    target: SocketAddr,
    name: &str,
    rtype: &str,
    extra: &[&str],
) -> Result<KdigReply> {
    let server = format!("@{}", target.ip());
    let port = target.port().to_string();
    let mut cmd = ns.command("kdig");
    cmd.args([server.as_str(), "-p", &port, "+timeout=2", "+retry=0"])
        .args(extra)
        .args([name, rtype])
        .stdin(Stdio::null());
    let line = command_line(&cmd);
    let output = cmd
        .output()
        .with_context(|| format!("could not start `{line}`"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let printed = || format!("stdout:\n{stdout}\nstderr:\n{stderr}");
    ensure!(
        output.status.success(),
        "`{line}` failed ({}); {}",
        output.status,
        printed()
    );
    parse_kdig(&stdout, rtype).with_context(|| format!("parsing `{line}`; {}", printed()))
}

/// Parses kdig 3.2's default text output (see the fixtures in the tests below).
fn parse_kdig(stdout: &str, rtype: &str) -> Result<KdigReply> {
    let headers: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix(";; ->>HEADER<<- "))
        .collect();
    let froms: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix(";; From "))
        .collect();
    let ([header], [from]) = (headers.as_slice(), froms.as_slice()) else {
        bail!(
            "expected one \";; ->>HEADER<<-\" and one \";; From\" line, found {} and {}",
            headers.len(),
            froms.len()
        );
    };
    let rcode = header
        .split(';')
        .find_map(|field| field.trim().strip_prefix("status: "))
        .with_context(|| format!("no status in header {header:?}"))?
        .trim()
        .to_owned();
    let (from, transport) = parse_from(from)?;
    let mut records = Vec::new();
    let answers = stdout
        .lines()
        .skip_while(|l| *l != ";; ANSWER SECTION:")
        .skip(1)
        .take_while(|l| !l.trim().is_empty());
    for line in answers {
        // name, [TTL,] [class,] type, rdata: tab-separated, and kdig escapes tabs in
        // rdata, so the last two fields are type and rdata whatever +nottl/+noclass say.
        let fields: Vec<&str> = line.split('\t').collect();
        let [.., kind, rdata] = fields.as_slice() else {
            bail!("answer line {line:?} has no type and rdata");
        };
        let kind = kind.trim();
        if !(rtype.eq_ignore_ascii_case("ANY") || kind.eq_ignore_ascii_case(rtype)) {
            continue;
        }
        records.push(if kind.eq_ignore_ascii_case("TXT") {
            unescape_txt(rdata)?
        } else {
            rdata.trim().to_owned()
        });
    }
    Ok(KdigReply {
        from,
        transport,
        rcode,
        records,
    })
}

/// `10.9.9.2@53(TCP) in 1.0 ms` or `::1@53(UDP) in 0.3 ms`.
fn parse_from(line: &str) -> Result<(SocketAddr, Transport)> {
    let peer = line.split_whitespace().next().unwrap_or_default();
    let Some((addr, proto)) = peer.strip_suffix(')').and_then(|p| p.split_once('(')) else {
        bail!("\";; From {line}\" is not <address>@<port>(<transport>)");
    };
    let Some((ip, port)) = addr.rsplit_once('@') else {
        bail!("\";; From {line}\" has no @<port>");
    };
    let ip: IpAddr = ip
        .parse()
        .with_context(|| format!("\";; From {line}\": bad address {ip:?}"))?;
    let port: u16 = port
        .parse()
        .with_context(|| format!("\";; From {line}\": bad port {port:?}"))?;
    let transport = match proto {
        "UDP" => Transport::Udp,
        "TCP" => Transport::Tcp,
        other => bail!("\";; From {line}\": transport {other:?} is neither UDP nor TCP"),
    };
    Ok((SocketAddr::new(ip, port), transport))
}

/// `"a b" "c\"d" "\009x"` -> `a bc"d\tx`: kdig quotes each character-string and escapes
/// `"` and `\` with a backslash and unprintable bytes as `\DDD`.
fn unescape_txt(rdata: &str) -> Result<String> {
    let mut out = Vec::new();
    let mut quoted = false;
    let mut bytes = rdata.trim().bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'"' => quoted = !quoted,
            // Between character-strings; kdig quotes every string, so never inside one.
            b' ' if !quoted => {}
            b'\\' => {
                let first = bytes.next().context("TXT rdata ends in a backslash")?;
                if first.is_ascii_digit() {
                    let digits = [
                        first,
                        bytes.next().unwrap_or(b'x'),
                        bytes.next().unwrap_or(b'x'),
                    ];
                    let value = std::str::from_utf8(&digits)
                        .ok()
                        .and_then(|d| d.parse::<u8>().ok())
                        .with_context(|| format!("bad \\DDD escape in TXT rdata {rdata:?}"))?;
                    out.push(value);
                } else {
                    out.push(first);
                }
            }
            _ => out.push(b),
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// What one query's reply (or its absence) amounts to; [`crate::load`] classifies with it too.
pub(crate) enum Verdict {
    Answered(Vec<Ipv4Addr>),
    Unanswered,
    WrongSource(SocketAddr),
    Error(String),
}

/// One query from a fresh socket in the calling thread's namespace. Io errors are local
/// failures (socket, send); everything the peer did is a [`Verdict`].
fn query(target: SocketAddr, name: &Name, timeout: Duration) -> Result<Verdict> {
    let bind: SocketAddr = match target {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    // Unconnected on purpose: a connected socket would silently drop a reply from the
    // wrong source, and that is exactly what wrong_source must catch.
    let socket = UdpSocket::bind(bind).context("binding a UDP socket")?;
    let question = Query::query(name.clone(), RecordType::A);
    let mut request = Message::query(); // random id
    request.metadata.recursion_desired = false;
    request.add_query(question.clone());
    let bytes = request.to_vec().context("encoding the query")?;
    socket
        .send_to(&bytes, target)
        .with_context(|| format!("sending a query to {target}"))?;

    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; 65_535];
    let (len, from) = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(Verdict::Unanswered);
        }
        socket.set_read_timeout(Some(left))?;
        match socket.recv_from(&mut buf) {
            Ok(got) => break got,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Ok(Verdict::Unanswered);
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("receiving a reply"),
        }
    };
    if from != target {
        return Ok(Verdict::WrongSource(from));
    }
    Ok(check_reply(request.metadata.id, &question, &buf[..len]))
}

/// Classifies `bytes` as the reply to a query with `id` asking `question`.
pub(crate) fn check_reply(id: u16, question: &Query, bytes: &[u8]) -> Verdict {
    let reply = match Message::from_vec(bytes) {
        Ok(reply) => reply,
        Err(e) => return Verdict::Error(format!("unparsable reply: {e}")),
    };
    let meta = &reply.metadata;
    if meta.message_type != MessageType::Response {
        return Verdict::Error("reply is not a response".to_owned());
    }
    if meta.id != id {
        return Verdict::Error(format!("reply id {} != query id {id}", meta.id));
    }
    if reply.queries.as_slice() != std::slice::from_ref(question) {
        return Verdict::Error(format!(
            "reply question {:?} != {question:?}",
            reply.queries
        ));
    }
    if meta.response_code != ResponseCode::NoError {
        return Verdict::Error(format!("rcode {}", meta.response_code));
    }
    Verdict::Answered(
        reply
            .answers
            .iter()
            .filter_map(|record| match &record.data {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect(),
    )
}

/// Names are always absolute: "whoami.example" and "whoami.example." ask the same.
pub(crate) fn parse_name(name: &str) -> Result<Name> {
    let mut parsed =
        Name::from_ascii(name).with_context(|| format!("invalid DNS name {name:?}"))?;
    parsed.set_fqdn(true);
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use hickory_proto::rr::{Record, rdata::A};

    use super::*;

    fn request() -> (Message, Query) {
        let question = Query::query(parse_name("whoami.example").unwrap(), RecordType::A);
        let mut request = Message::query();
        request.add_query(question.clone());
        (request, question)
    }

    fn reply_to(request: &Message, question: &Query) -> Message {
        let mut reply = Message::response(request.metadata.id, request.metadata.op_code);
        reply.add_query(question.clone());
        reply.add_answer(Record::from_rdata(
            question.name.clone(),
            60,
            RData::A(A(Ipv4Addr::new(10, 0, 0, 2))),
        ));
        reply
    }

    #[test]
    fn matching_reply_is_answered() {
        let (request, question) = request();
        let reply = reply_to(&request, &question).to_vec().unwrap();
        assert!(matches!(
            check_reply(request.metadata.id, &question, &reply),
            Verdict::Answered(a) if a == [Ipv4Addr::new(10, 0, 0, 2)]
        ));
    }

    #[test]
    fn wrong_id_question_rcode_and_garbage_are_errors() {
        let (request, question) = request();
        let mut bad_id = reply_to(&request, &question);
        bad_id.metadata.id = request.metadata.id.wrapping_add(1);
        let mut bad_question = reply_to(&request, &question);
        bad_question.queries[0].name = parse_name("other.example").unwrap();
        let mut refused = reply_to(&request, &question);
        refused.metadata.response_code = ResponseCode::Refused;
        for reply in [bad_id, bad_question, refused] {
            let bytes = reply.to_vec().unwrap();
            assert!(matches!(
                check_reply(request.metadata.id, &question, &bytes),
                Verdict::Error(_)
            ));
        }
        assert!(matches!(
            check_reply(request.metadata.id, &question, &[1, 2, 3]),
            Verdict::Error(_)
        ));
    }

    // Verbatim kdig 3.2.6 output against BIND 9.18 (tabs as printed).
    const KDIG_UDP_A: &str = ";; ->>HEADER<<- opcode: QUERY; status: NOERROR; id: 4742
;; Flags: qr aa rd; QUERY: 1; ANSWER: 1; AUTHORITY: 0; ADDITIONAL: 0

;; QUESTION SECTION:
;; whoami.example.     \t\tIN\tA

;; ANSWER SECTION:
whoami.example.     \t60\tIN\tA\t10.9.9.2

;; Received 48 B
;; Time 2026-11-26 10:30:50 UTC
;; From 10.9.9.2@53(UDP) in 0.3 ms
";

    /// A truncated UDP answer retried over TCP: kdig's warning goes to stderr and leaves
    /// a blank first line on stdout.
    const KDIG_TC_RETRY_TXT: &str = "
;; ->>HEADER<<- opcode: QUERY; status: NOERROR; id: 29026
;; Flags: qr aa rd; QUERY: 1; ANSWER: 2; AUTHORITY: 0; ADDITIONAL: 0

;; QUESTION SECTION:
;; big.example.        \t\tIN\tTXT

;; ANSWER SECTION:
big.example.        \t60\tIN\tTXT\t\"01-xxx\"
big.example.        \t60\tIN\tTXT\t\"00-xxx\"

;; Received 1733 B
;; Time 2026-11-26 10:30:50 UTC
;; From 10.9.9.2@53(TCP) in 0.4 ms
";

    #[test]
    fn kdig_udp_answer_parses() {
        let reply = parse_kdig(KDIG_UDP_A, "A").unwrap();
        assert_eq!(
            reply,
            KdigReply {
                from: "10.9.9.2:53".parse().unwrap(),
                transport: Transport::Udp,
                rcode: "NOERROR".to_owned(),
                records: vec!["10.9.9.2".to_owned()],
            }
        );
    }

    #[test]
    fn kdig_tcp_retry_parses_as_tcp_with_every_txt_record() {
        let reply = parse_kdig(KDIG_TC_RETRY_TXT, "TXT").unwrap();
        assert_eq!(reply.transport, Transport::Tcp);
        assert_eq!(reply.records, ["01-xxx", "00-xxx"]);
    }

    #[test]
    fn kdig_refused_ipv6_and_other_types() {
        let refused = ";; ->>HEADER<<- opcode: QUERY; status: REFUSED; id: 41755
;; Flags: qr rd; QUERY: 1; ANSWER: 0; AUTHORITY: 0; ADDITIONAL: 0

;; QUESTION SECTION:
;; foo.other.          \t\tIN\tA

;; Received 27 B
;; Time 2026-11-26 10:30:53 UTC
;; From ::1@53(UDP) in 0.2 ms
";
        let reply = parse_kdig(refused, "A").unwrap();
        assert_eq!(reply.rcode, "REFUSED");
        assert_eq!(reply.from, "[::1]:53".parse().unwrap());
        assert!(reply.records.is_empty());
        // A CNAME on the way to the A record is not an A record; +nottl +noclass drop fields.
        let chain = KDIG_UDP_A.replace(
            "whoami.example.     \t60\tIN\tA\t10.9.9.2",
            "www.example.\tCNAME\twhoami.example.\nwhoami.example.\tA\t10.9.9.2",
        );
        assert_eq!(parse_kdig(&chain, "a").unwrap().records, ["10.9.9.2"]);
        assert_eq!(parse_kdig(&chain, "ANY").unwrap().records.len(), 2);
    }

    #[test]
    fn kdig_txt_escapes() {
        // As kdig prints `multi IN TXT "a b" "c\"d" "e\\f" "\009tab\255"`.
        let got = unescape_txt(r#""a b" "c\"d" "e\\f" "\009tab\255""#).unwrap();
        assert_eq!(got, "a bc\"de\\f\ttab\u{fffd}");
        assert!(unescape_txt(r#""\1""#).is_err());
    }

    #[test]
    fn kdig_output_without_a_reply_is_an_error() {
        for (out, why) in [
            ("10.9.9.2\n", "one"),
            (&KDIG_UDP_A.replace("@53(UDP)", "@53(QUIC)"), "QUIC"),
            (&KDIG_UDP_A.replace("10.9.9.2@53", "10.9.9.2"), "@<port>"),
            (&format!("{KDIG_UDP_A}{KDIG_UDP_A}"), "found 2 and 2"),
        ] {
            let msg = format!("{:#}", parse_kdig(out, "A").unwrap_err());
            assert!(msg.contains(why), "{msg}");
        }
    }

    #[derive(Clone, Copy)]
    enum Fake {
        Correct,
        FromOtherAddr,
        BadId,
    }

    /// Serves `count` queries on 127.0.0.1:5300 in `ns` the way `mode` says, while
    /// `query_load` runs against it, and returns the outcome.
    fn load_against_fake(mode: Fake, count: usize) -> Outcome {
        let ns = NetNs::new("unit").unwrap();
        let listen: SocketAddr = "127.0.0.1:5300".parse().unwrap();
        let answer = Ipv4Addr::new(10, 9, 8, 7);
        let ns = &ns;
        std::thread::scope(|scope| {
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            let server = scope.spawn(move || {
                ns.setns_current_thread().unwrap();
                let socket = UdpSocket::bind(listen).unwrap();
                // Any other loopback address is local too: a reply "from elsewhere".
                let other = UdpSocket::bind("127.0.0.2:5300").unwrap();
                socket
                    .set_read_timeout(Some(Duration::from_secs(5)))
                    .unwrap();
                ready_tx.send(()).unwrap();
                let mut buf = [0u8; 512];
                for _ in 0..count {
                    let (len, from) = socket.recv_from(&mut buf).unwrap();
                    let request = Message::from_vec(&buf[..len]).unwrap();
                    let mut reply = reply_to(&request, &request.queries[0]);
                    reply.answers[0].data = RData::A(A(answer));
                    if matches!(mode, Fake::BadId) {
                        reply.metadata.id = request.metadata.id.wrapping_add(1);
                    }
                    let out = if matches!(mode, Fake::FromOtherAddr) {
                        &other
                    } else {
                        &socket
                    };
                    out.send_to(&reply.to_vec().unwrap(), from).unwrap();
                }
            });
            ready_rx.recv().unwrap();
            let load = Load {
                concurrency: 4,
                timeout: Duration::from_secs(2),
                ..Load::new(vec![listen], "whoami.example", count)
            };
            let outcome = query_load(ns, &load).unwrap();
            server.join().unwrap();
            outcome
        })
    }

    fn require_root() {
        crate::require_root_tools(&["ip"]).unwrap_or_else(|e| panic!("{e:#}"));
    }

    #[test]
    fn load_counts_answers_per_address() {
        require_root();
        let outcome = load_against_fake(Fake::Correct, 20);
        assert_eq!(outcome.answered, 20, "{outcome}");
        assert_eq!(
            outcome.by_answer,
            BTreeMap::from([(Ipv4Addr::new(10, 9, 8, 7), 20)])
        );
    }

    #[test]
    fn load_flags_replies_from_another_address() {
        require_root();
        let outcome = load_against_fake(Fake::FromOtherAddr, 12);
        assert_eq!(
            (outcome.wrong_source, outcome.answered),
            (12, 0),
            "{outcome}"
        );
        assert!(outcome.by_answer.is_empty());
    }

    #[test]
    fn load_flags_bad_ids() {
        require_root();
        let outcome = load_against_fake(Fake::BadId, 12);
        assert_eq!(
            (outcome.other_errors, outcome.answered),
            (12, 0),
            "{outcome}"
        );
    }

    #[test]
    fn silence_is_unanswered_and_query_once_is_none() {
        require_root();
        let ns = NetNs::new("unit").unwrap();
        let target: SocketAddr = "127.0.0.1:5301".parse().unwrap();
        let load = Load {
            timeout: Duration::from_millis(200),
            ..Load::new(vec![target], "whoami.example", 6)
        };
        let outcome = query_load(&ns, &load).unwrap();
        assert_eq!(outcome.unanswered, 6, "{outcome}");
        let once = query_once(&ns, target, "whoami.example", Duration::from_millis(200));
        assert_eq!(once.unwrap(), None);
    }

    #[test]
    fn outcome_merges_and_counts() {
        let mut a = Outcome::default();
        a.record(Verdict::Answered(vec![Ipv4Addr::new(10, 0, 0, 2)]));
        a.record(Verdict::Unanswered);
        let mut b = Outcome::default();
        b.record(Verdict::Answered(vec![Ipv4Addr::new(10, 0, 0, 2)]));
        b.record(Verdict::WrongSource("10.0.0.9:53".parse().unwrap()));
        b.record(Verdict::Error("x".to_owned()));
        a.merge(b);
        assert_eq!(a.total(), 5);
        assert_eq!(a.answered, 2);
        assert_eq!(a.by_answer[&Ipv4Addr::new(10, 0, 0, 2)], 2);
        assert_eq!((a.unanswered, a.wrong_source, a.other_errors), (1, 1, 1));
    }
}

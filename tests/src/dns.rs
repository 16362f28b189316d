//! A DNS client for tests: a load generator, a single-query probe and the real `kdig`.
//!
//! Messages are built and parsed with hickory-proto, so a malformed answer from the
//! load balancer shows up as a parse error, not as a mistake in our own encoder.

use std::{
    collections::BTreeMap,
    fmt,
    io::ErrorKind,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use hickory_proto::{
    op::{Message, MessageType, Query, ResponseCode},
    rr::{Name, RData, RecordType},
};

use crate::netns::NetNs;

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

enum Verdict {
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
    Ok(check_reply(&request, &question, &buf[..len]))
}

fn check_reply(request: &Message, question: &Query, bytes: &[u8]) -> Verdict {
    let reply = match Message::from_vec(bytes) {
        Ok(reply) => reply,
        Err(e) => return Verdict::Error(format!("unparsable reply: {e}")),
    };
    let meta = &reply.metadata;
    if meta.message_type != MessageType::Response {
        return Verdict::Error("reply is not a response".to_owned());
    }
    if meta.id != request.metadata.id {
        return Verdict::Error(format!(
            "reply id {} != query id {}",
            meta.id, request.metadata.id
        ));
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
fn parse_name(name: &str) -> Result<Name> {
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
            check_reply(&request, &question, &reply),
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
                check_reply(&request, &question, &bytes),
                Verdict::Error(_)
            ));
        }
        assert!(matches!(
            check_reply(&request, &question, &[1, 2, 3]),
            Verdict::Error(_)
        ));
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

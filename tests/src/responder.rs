//! A DNS server for tests that answers late or badly on purpose: each answer leaves a
//! fixed delay after its query arrived, with the RCODE and size the test asks for. It
//! stands in for a recursive resolver on a cache miss (no netem in the test kernel) or
//! a backend that fails (SERVFAIL, silence).
//!
//! One thread per [`Responder`], joined to a backend's namespace, serves UDP and TCP on
//! every address it was given. Answers wait in a heap ordered by due time, so thousands
//! of queries can be in flight without a thread or a timer each.

use std::{
    cmp::Ordering as CmpOrdering,
    collections::{BinaryHeap, HashMap},
    io::{ErrorKind, Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::{AsRawFd, RawFd},
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail, ensure};
use hickory_proto::{
    op::{Edns, Message, MessageType, ResponseCode},
    rr::{
        RData, Record, RecordType,
        rdata::{A, AAAA, TXT},
    },
};

use crate::netns::NetNs;

/// The longest the event loop sleeps, so [`Responder::stop`] is noticed soon.
const MAX_SLEEP: Duration = Duration::from_millis(50);
/// Datagrams read from one socket before the loop looks at due answers again.
const READ_BATCH: usize = 256;
/// Kernel receive buffer per UDP socket: a burst of queries waits here, not on the floor.
const UDP_RCVBUF: libc::c_int = 4 << 20;
/// The EDNS payload size the responder advertises (and accepts up to).
const EDNS_PAYLOAD: u16 = 4096;
const TTL: u32 = 60;
/// The rdata of a TXT answer.
pub const RESPONDER_TXT: &str = "dnsteer-testbed-responder";

/// How a [`Responder`] answers. Read per query, so [`Responder::set_behaviour`] takes
/// effect with the next query that arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Behaviour {
    /// Every answer leaves this long after its query was read.
    pub delay: Duration,
    /// The answers' RCODE. Records are added only to NOERROR answers: A = the first
    /// IPv4 address the responder listens on, AAAA = the first IPv6 one (so an answer
    /// names its backend, like BIND's `whoami`), TXT = [`RESPONDER_TXT`]; other types
    /// get an empty NOERROR answer.
    pub rcode: ResponseCode,
    /// Answers are padded to at least this many bytes with a TXT record in the
    /// additional section (0: no padding). Over UDP an answer larger than the query's
    /// EDNS payload size (512 without EDNS) is sent truncated (TC, no records).
    pub min_answer_bytes: usize,
    /// False: queries are read and counted, never answered (a backend that is up but dead).
    pub answer: bool,
}

impl Default for Behaviour {
    fn default() -> Self {
        Self {
            delay: Duration::ZERO,
            rcode: ResponseCode::NoError,
            min_answer_bytes: 0,
            answer: true,
        }
    }
}

impl Behaviour {
    /// NOERROR answers `delay` after each query.
    pub fn delayed(delay: Duration) -> Self {
        Self {
            delay,
            ..Self::default()
        }
    }

    /// Answers at once with `rcode` (SERVFAIL, REFUSED, ...).
    pub fn rcode(rcode: ResponseCode) -> Self {
        Self {
            rcode,
            ..Self::default()
        }
    }

    /// Reads queries and never answers.
    pub fn silent() -> Self {
        Self {
            answer: false,
            ..Self::default()
        }
    }
}

/// What a [`Responder`] has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResponderStats {
    /// DNS queries read (UDP and TCP).
    pub received: u64,
    /// Of `received`, over TCP.
    pub received_tcp: u64,
    /// Answers handed to the kernel.
    pub answered: u64,
    /// Of `answered`, UDP answers sent truncated for size.
    pub truncated: u64,
    /// Datagrams or TCP messages that were not a DNS query (not answered).
    pub malformed: u64,
    /// Answers the kernel refused (send errors) or whose TCP connection was gone.
    pub send_failed: u64,
    /// Queries read and not yet answered: waiting out their delay.
    pub pending: u64,
    /// The most `pending` ever was.
    pub peak_pending: u64,
}

#[derive(Default)]
struct Counters {
    received: AtomicU64,
    received_tcp: AtomicU64,
    answered: AtomicU64,
    truncated: AtomicU64,
    malformed: AtomicU64,
    send_failed: AtomicU64,
    pending: AtomicU64,
    peak_pending: AtomicU64,
}

impl Counters {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> ResponderStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ResponderStats {
            received: get(&self.received),
            received_tcp: get(&self.received_tcp),
            answered: get(&self.answered),
            truncated: get(&self.truncated),
            malformed: get(&self.malformed),
            send_failed: get(&self.send_failed),
            pending: get(&self.pending),
            peak_pending: get(&self.peak_pending),
        }
    }
}

/// What the event loop thread shares with its [`Responder`].
struct Shared {
    behaviour: Mutex<Behaviour>,
    counters: Counters,
    stop: AtomicBool,
}

/// A delayed DNS responder on UDP and TCP, running on a thread inside a namespace until
/// stopped or dropped.
pub struct Responder {
    listen: Vec<SocketAddr>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Responder {
    /// Binds UDP and TCP on every address of `listen` inside `ns` and starts answering
    /// with `behaviour`. Returns once every socket is bound, so the first query sent
    /// afterwards is served; errors name the address that could not be bound.
    pub fn start(ns: &NetNs, listen: &[SocketAddr], behaviour: Behaviour) -> Result<Self> {
        ensure!(
            !listen.is_empty(),
            "Responder::start needs at least one address"
        );
        let shared = Arc::new(Shared {
            behaviour: Mutex::new(behaviour),
            counters: Counters::default(),
            stop: AtomicBool::new(false),
        });
        let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
        let ns_path = ns.path();
        let ns_name = ns.name().to_owned();
        let addrs = listen.to_vec();
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name(format!("responder-{}", listen[0]))
            .spawn(move || {
                match Server::bind(&ns_path, &addrs, thread_shared) {
                    Ok(mut server) => {
                        // The receiver waits for this message: it cannot be gone yet.
                        let _ = ready_tx.send(Ok(()));
                        server.run();
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })
            .context("spawning the responder thread")?;
        let ready = ready_rx
            .recv()
            .map_err(|_| anyhow!("the responder thread ended before it was ready"));
        if let Err(e) = ready.and_then(|r| r) {
            let _ = thread.join();
            return Err(e.context(format!("starting a responder in {ns_name}")));
        }
        Ok(Self {
            listen: listen.to_vec(),
            shared,
            thread: Some(thread),
        })
    }

    /// The addresses it serves (UDP and TCP on each).
    pub fn listen(&self) -> &[SocketAddr] {
        &self.listen
    }

    /// Applies to queries read from now on; answers already pending keep theirs.
    pub fn set_behaviour(&self, behaviour: Behaviour) {
        *self
            .shared
            .behaviour
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = behaviour;
    }

    pub fn behaviour(&self) -> Behaviour {
        *self
            .shared
            .behaviour
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    pub fn stats(&self) -> ResponderStats {
        self.shared.counters.snapshot()
    }

    /// Waits until nothing is pending (every query read so far was answered), at most
    /// `timeout`; the stats at that point, or an error with them.
    pub fn wait_idle(&self, timeout: Duration) -> Result<ResponderStats> {
        let deadline = Instant::now() + timeout;
        loop {
            let stats = self.stats();
            if stats.pending == 0 {
                return Ok(stats);
            }
            if Instant::now() > deadline {
                bail!(
                    "responder on {:?} still has {} answers pending after {timeout:?}: {stats:?}",
                    self.listen,
                    stats.pending
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops answering and closes every socket; answers still pending are never sent.
    /// A no-op when already stopped.
    pub fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            eprintln!("testbed: the responder on {:?} panicked", self.listen);
        }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        // Before the namespace goes: a thread inside keeps it alive.
        self.stop();
    }
}

/// Where an answer goes.
enum Peer {
    Udp { socket: usize, addr: SocketAddr },
    Tcp { conn: u64 },
}

/// An answer waiting for its due time; ordered so the heap's top is the earliest.
struct Pending {
    due: Instant,
    /// Arrival order, so answers due at the same instant leave in order.
    seq: u64,
    peer: Peer,
    bytes: Vec<u8>,
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == CmpOrdering::Equal
    }
}

impl Eq for Pending {}

impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}

impl Ord for Pending {
    fn cmp(&self, other: &Self) -> CmpOrdering {
        // Reversed: BinaryHeap is a max-heap.
        (other.due, other.seq).cmp(&(self.due, self.seq))
    }
}

/// One accepted TCP connection: a stream of 2-byte-length-prefixed messages.
struct Conn {
    stream: TcpStream,
    input: Vec<u8>,
    output: Vec<u8>,
    /// The client closed its side; the connection goes once its answers are out.
    eof: bool,
    pending: usize,
}

/// The event loop's state, owned by the responder thread.
struct Server {
    shared: Arc<Shared>,
    udp: Vec<UdpSocket>,
    tcp: Vec<TcpListener>,
    conns: HashMap<u64, Conn>,
    next_conn: u64,
    heap: BinaryHeap<Pending>,
    seq: u64,
    a: Option<Ipv4Addr>,
    aaaa: Option<Ipv6Addr>,
}

impl Server {
    /// Joins the namespace at `ns_path` (this thread for good) and binds everything.
    fn bind(ns_path: &Path, listen: &[SocketAddr], shared: Arc<Shared>) -> Result<Self> {
        let file = std::fs::File::open(ns_path)
            .with_context(|| format!("opening {}", ns_path.display()))?;
        // SAFETY: the fd is valid for the call; setns only moves this thread, which the
        // responder owns and ends.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("setns into {}", ns_path.display()));
        }
        let mut udp = Vec::new();
        let mut tcp = Vec::new();
        for addr in listen {
            let socket = UdpSocket::bind(addr).with_context(|| format!("binding UDP {addr}"))?;
            socket.set_nonblocking(true)?;
            set_rcvbuf(socket.as_raw_fd(), UDP_RCVBUF);
            udp.push(socket);
            let listener =
                TcpListener::bind(addr).with_context(|| format!("binding TCP {addr}"))?;
            listener.set_nonblocking(true)?;
            tcp.push(listener);
        }
        let a = listen.iter().find_map(|a| match a.ip() {
            IpAddr::V4(ip) => Some(ip),
            IpAddr::V6(_) => None,
        });
        let aaaa = listen.iter().find_map(|a| match a.ip() {
            IpAddr::V6(ip) => Some(ip),
            IpAddr::V4(_) => None,
        });
        Ok(Self {
            shared,
            udp,
            tcp,
            conns: HashMap::new(),
            next_conn: 0,
            heap: BinaryHeap::new(),
            seq: 0,
            a,
            aaaa,
        })
    }

    fn run(&mut self) {
        let mut buf = vec![0u8; 65_535];
        while !self.shared.stop.load(Ordering::Relaxed) {
            self.send_due();
            self.conns
                .retain(|_, c| !(c.eof && c.pending == 0 && c.output.is_empty()));

            let now = Instant::now();
            let sleep = self
                .heap
                .peek()
                .map_or(MAX_SLEEP, |p| p.due.saturating_duration_since(now))
                .min(MAX_SLEEP);
            let conn_ids: Vec<u64> = self.conns.keys().copied().collect();
            let mut fds: Vec<libc::pollfd> = self
                .udp
                .iter()
                .map(|s| s.as_raw_fd())
                .chain(self.tcp.iter().map(|l| l.as_raw_fd()))
                .map(|fd| pollfd(fd, libc::POLLIN))
                .collect();
            for id in &conn_ids {
                let conn = &self.conns[id];
                let mut events = if conn.eof { 0 } else { libc::POLLIN };
                if !conn.output.is_empty() {
                    events |= libc::POLLOUT;
                }
                fds.push(pollfd(conn.stream.as_raw_fd(), events));
            }
            // Rounded up: waking before the due time would only spin.
            let ms = libc::c_int::try_from(sleep.as_nanos().div_ceil(1_000_000)).unwrap_or(50);
            // SAFETY: `fds` is a valid array of `fds.len()` pollfds for the call.
            let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
            if ready <= 0 {
                continue; // timeout, or EINTR
            }
            let (n_udp, n_tcp) = (self.udp.len(), self.tcp.len());
            for (k, fd) in fds.iter().enumerate() {
                if fd.revents == 0 {
                    continue;
                }
                if k < n_udp {
                    self.read_udp(k, &mut buf);
                } else if k < n_udp + n_tcp {
                    self.accept(k - n_udp);
                } else {
                    self.serve_conn(conn_ids[k - n_udp - n_tcp], fd.revents, &mut buf);
                }
            }
        }
    }

    fn read_udp(&mut self, k: usize, buf: &mut [u8]) {
        for _ in 0..READ_BATCH {
            let (len, from) = match self.udp[k].recv_from(buf) {
                Ok(got) => got,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return, // WouldBlock, or an ICMP error queued on the socket
            };
            let peer = Peer::Udp {
                socket: k,
                addr: from,
            };
            self.schedule(&buf[..len], peer, true);
        }
    }

    fn accept(&mut self, k: usize) {
        while let Ok((stream, _)) = self.tcp[k].accept() {
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            self.conns.insert(
                self.next_conn,
                Conn {
                    stream,
                    input: Vec::new(),
                    output: Vec::new(),
                    eof: false,
                    pending: 0,
                },
            );
            self.next_conn += 1;
        }
    }

    fn serve_conn(&mut self, id: u64, revents: libc::c_short, buf: &mut [u8]) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        if revents & libc::POLLOUT != 0 {
            flush(conn);
        }
        if revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 && !conn.eof {
            loop {
                match conn.stream.read(buf) {
                    Ok(0) => {
                        conn.eof = true;
                        break;
                    }
                    Ok(n) => conn.input.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(_) => {
                        conn.eof = true;
                        break;
                    }
                }
            }
        }
        let mut messages = Vec::new();
        while conn.input.len() >= 2 {
            let len = usize::from(u16::from_be_bytes([conn.input[0], conn.input[1]]));
            if conn.input.len() < 2 + len {
                break;
            }
            messages.push(conn.input[2..2 + len].to_vec());
            conn.input.drain(..2 + len);
        }
        for message in messages {
            Counters::bump(&self.shared.counters.received_tcp);
            self.schedule(&message, Peer::Tcp { conn: id }, false);
        }
    }

    /// Counts a query and queues its answer (if it gets one) for `now + delay`.
    fn schedule(&mut self, query: &[u8], peer: Peer, udp: bool) {
        let counters = &self.shared.counters;
        let behaviour = *self
            .shared
            .behaviour
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let answer = match build_answer(query, &behaviour, self.a, self.aaaa, udp) {
            Ok(answer) => answer,
            Err(_) => {
                Counters::bump(&counters.malformed);
                return;
            }
        };
        Counters::bump(&counters.received);
        if !behaviour.answer {
            return;
        }
        if answer.truncated {
            Counters::bump(&counters.truncated);
        }
        if let Peer::Tcp { conn } = peer
            && let Some(conn) = self.conns.get_mut(&conn)
        {
            conn.pending += 1;
        }
        self.heap.push(Pending {
            due: Instant::now() + behaviour.delay,
            seq: self.seq,
            peer,
            bytes: answer.bytes,
        });
        self.seq += 1;
        let pending = self.heap.len() as u64;
        counters.pending.store(pending, Ordering::Relaxed);
        counters.peak_pending.fetch_max(pending, Ordering::Relaxed);
    }

    /// Sends every answer whose time has come.
    fn send_due(&mut self) {
        let counters = &self.shared.counters;
        let now = Instant::now();
        while self.heap.peek().is_some_and(|p| p.due <= now) {
            let Some(answer) = self.heap.pop() else { break };
            let sent = match answer.peer {
                Peer::Udp { socket, addr } => self.udp[socket].send_to(&answer.bytes, addr).is_ok(),
                Peer::Tcp { conn } => match self.conns.get_mut(&conn) {
                    Some(conn) => {
                        conn.pending -= 1;
                        let len = u16::try_from(answer.bytes.len()).unwrap_or(u16::MAX);
                        conn.output.extend_from_slice(&len.to_be_bytes());
                        conn.output.extend_from_slice(&answer.bytes);
                        flush(conn)
                    }
                    None => false,
                },
            };
            Counters::bump(if sent {
                &counters.answered
            } else {
                &counters.send_failed
            });
        }
        counters
            .pending
            .store(self.heap.len() as u64, Ordering::Relaxed);
    }
}

/// Writes what the connection can take now; false if it is broken.
fn flush(conn: &mut Conn) -> bool {
    while !conn.output.is_empty() {
        match conn.stream.write(&conn.output) {
            Ok(0) => break,
            Ok(n) => {
                conn.output.drain(..n);
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(_) => {
                conn.output.clear();
                conn.eof = true;
                return false;
            }
        }
    }
    true
}

fn pollfd(fd: RawFd, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

/// SO_RCVBUFFORCE (root may exceed rmem_max), falling back to SO_RCVBUF; best effort.
fn set_rcvbuf(fd: RawFd, bytes: libc::c_int) {
    for option in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        // SAFETY: `bytes` outlives the call and its size is passed along.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                option,
                (&bytes as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            return;
        }
    }
}

/// An encoded answer and whether it was truncated for UDP.
struct Answer {
    bytes: Vec<u8>,
    truncated: bool,
}

/// The answer `behaviour` gives to `query`; Err if `query` is not a DNS query.
fn build_answer(
    query: &[u8],
    behaviour: &Behaviour,
    a: Option<Ipv4Addr>,
    aaaa: Option<Ipv6Addr>,
    udp: bool,
) -> Result<Answer> {
    let request = Message::from_vec(query).map_err(|e| anyhow!("unparsable query: {e}"))?;
    ensure!(
        request.metadata.message_type == MessageType::Query,
        "not a query"
    );
    let mut reply = Message::response(request.metadata.id, request.metadata.op_code);
    reply.metadata.authoritative = true;
    reply.metadata.recursion_desired = request.metadata.recursion_desired;
    reply.metadata.response_code = behaviour.rcode;
    reply.add_queries(request.queries.iter().cloned());
    if request.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_PAYLOAD);
        reply.set_edns(edns);
    }
    if behaviour.rcode == ResponseCode::NoError {
        for question in &request.queries {
            let rdata = match question.query_type {
                RecordType::A => a.map(|ip| RData::A(A(ip))),
                RecordType::AAAA => aaaa.map(|ip| RData::AAAA(AAAA(ip))),
                RecordType::TXT => Some(RData::TXT(TXT::new(vec![RESPONDER_TXT.to_owned()]))),
                _ => None,
            };
            if let Some(rdata) = rdata {
                reply.add_answer(Record::from_rdata(question.name.clone(), TTL, rdata));
            }
        }
    }
    let mut bytes = encode(&reply)?;
    // A record's fixed part (name pointer, type, class, TTL, length) is about 12 bytes;
    // aim, then top up by what is still missing (name compression may differ).
    let mut padding = 0usize;
    for _ in 0..4 {
        if bytes.len() >= behaviour.min_answer_bytes {
            break;
        }
        let missing = behaviour.min_answer_bytes - bytes.len();
        padding += missing
            .saturating_sub(if padding == 0 { 12 } else { 0 })
            .max(1);
        let mut padded = reply.clone();
        padded.add_additional(padding_record(&request, padding));
        bytes = encode(&padded)?;
    }
    let limit = usize::from(request.max_payload().min(EDNS_PAYLOAD));
    if udp && bytes.len() > limit {
        let mut truncated = reply.truncate();
        truncated.add_queries(request.queries.iter().cloned());
        return Ok(Answer {
            bytes: encode(&truncated)?,
            truncated: true,
        });
    }
    Ok(Answer {
        bytes,
        truncated: false,
    })
}

/// A TXT record of about `bytes` bytes on the wire (strings of up to 255 bytes, one
/// length byte each), named like the first question.
fn padding_record(request: &Message, bytes: usize) -> Record {
    let name = request
        .queries
        .first()
        .map(|q| q.name.clone())
        .unwrap_or_default();
    let mut left = bytes;
    let mut strings = Vec::new();
    while left > 1 {
        let len = (left - 1).min(255);
        strings.push("p".repeat(len));
        left -= len + 1;
    }
    Record::from_rdata(name, TTL, RData::TXT(TXT::new(strings)))
}

fn encode(message: &Message) -> Result<Vec<u8>> {
    message.to_vec().context("encoding an answer")
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use hickory_proto::op::Query;

    use super::*;
    use crate::dns::parse_name;

    fn query(rtype: RecordType, edns: Option<u16>) -> Message {
        let mut request = Message::query();
        request.add_query(Query::query(parse_name("whoami.example").unwrap(), rtype));
        if let Some(size) = edns {
            let mut e = Edns::new();
            e.set_max_payload(size);
            request.set_edns(e);
        }
        request
    }

    const V4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

    fn answer(request: &Message, behaviour: Behaviour, udp: bool) -> (Message, Answer) {
        let bytes = request.to_vec().unwrap();
        let answer = build_answer(&bytes, &behaviour, Some(V4), None, udp).unwrap();
        (Message::from_vec(&answer.bytes).unwrap(), answer)
    }

    #[test]
    fn answers_a_with_its_address_and_the_asked_rcode() {
        let request = query(RecordType::A, None);
        let (reply, _) = answer(&request, Behaviour::default(), true);
        assert_eq!(reply.metadata.id, request.metadata.id);
        assert_eq!(reply.metadata.message_type, MessageType::Response);
        assert_eq!(reply.queries, request.queries);
        assert_eq!(reply.answers.len(), 1);
        assert_eq!(reply.answers[0].data, RData::A(A(V4)));

        let (reply, _) = answer(&request, Behaviour::rcode(ResponseCode::ServFail), true);
        assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
        assert!(reply.answers.is_empty());

        // No IPv6 address to give: an empty NOERROR.
        let (reply, _) = answer(&query(RecordType::AAAA, None), Behaviour::default(), true);
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
        assert!(reply.answers.is_empty());
    }

    #[test]
    fn pads_to_the_size_asked_and_truncates_past_the_udp_limit() {
        let big = Behaviour {
            min_answer_bytes: 2000,
            ..Behaviour::default()
        };
        for (edns, udp, truncated) in [
            (None, true, true),
            (Some(1232), true, true),
            (Some(4096), true, false),
            (None, false, false),
        ] {
            let (reply, answer) = answer(&query(RecordType::A, edns), big, udp);
            assert_eq!(answer.truncated, truncated, "{edns:?} udp={udp}");
            assert_eq!(reply.metadata.truncation, truncated, "{edns:?} udp={udp}");
            if truncated {
                assert!(answer.bytes.len() <= 512, "{}", answer.bytes.len());
                assert!(reply.answers.is_empty());
            } else {
                let len = answer.bytes.len();
                assert!((2000..2010).contains(&len), "{edns:?}: {len} bytes");
                assert_eq!(reply.answers[0].data, RData::A(A(V4)));
            }
        }
    }

    #[test]
    fn garbage_is_not_a_query() {
        assert!(build_answer(&[1, 2, 3], &Behaviour::default(), None, None, true).is_err());
        let mut reply = query(RecordType::A, None);
        reply.metadata.message_type = MessageType::Response;
        let bytes = reply.to_vec().unwrap();
        assert!(build_answer(&bytes, &Behaviour::default(), None, None, true).is_err());
    }

    /// 3000 queries in flight at once, each answered after the delay and not before,
    /// over UDP and TCP, and a silent responder counts without answering.
    #[test]
    fn thousands_in_flight_each_answered_after_the_delay() {
        crate::require_root_tools(&["ip"]).unwrap_or_else(|e| panic!("{e:#}"));
        let ns = NetNs::new("unit").unwrap();
        let listen: SocketAddr = "127.0.0.1:5330".parse().unwrap();
        let delay = Duration::from_millis(500);
        let mut responder = Responder::start(&ns, &[listen], Behaviour::delayed(delay)).unwrap();
        const N: usize = 3000;
        let (late, early, stats) = ns.enter(|| {
            let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
            set_rcvbuf(socket.as_raw_fd(), UDP_RCVBUF);
            let mut sent = HashMap::new();
            for id in 0..N as u16 {
                // Distinct ids: 3000 random ones would collide.
                let mut request = query(RecordType::A, None);
                request.metadata.id = id;
                sent.insert(request.metadata.id, Instant::now());
                socket.send_to(&request.to_vec().unwrap(), listen).unwrap();
            }
            let stats = responder.stats();
            socket
                .set_read_timeout(Some(Duration::from_secs(3)))
                .unwrap();
            let mut buf = [0u8; 512];
            let (mut late, mut early) = (0, 0);
            for _ in 0..sent.len() {
                let (len, _) = socket.recv_from(&mut buf).expect("an answer");
                let reply = Message::from_vec(&buf[..len]).unwrap();
                let rtt = sent[&reply.metadata.id].elapsed();
                if rtt < delay {
                    early += 1;
                } else if rtt > delay + Duration::from_millis(500) {
                    late += 1;
                }
            }
            // TCP: two queries on one connection, both answered after the delay.
            let mut stream = TcpStream::connect(listen).unwrap();
            let start = Instant::now();
            for _ in 0..2 {
                let bytes = query(RecordType::A, None).to_vec().unwrap();
                stream
                    .write_all(&(bytes.len() as u16).to_be_bytes())
                    .unwrap();
                stream.write_all(&bytes).unwrap();
            }
            for _ in 0..2 {
                let mut len = [0u8; 2];
                stream.read_exact(&mut len).unwrap();
                let mut body = vec![0u8; usize::from(u16::from_be_bytes(len))];
                stream.read_exact(&mut body).unwrap();
                let reply = Message::from_vec(&body).unwrap();
                assert_eq!(reply.answers[0].data, RData::A(A(Ipv4Addr::LOCALHOST)));
            }
            assert!(start.elapsed() >= delay);
            (late, early, stats)
        });
        assert_eq!(early, 0, "answers before the delay");
        assert!(late < N / 100, "{late} of {N} answers more than 0.5 s late");
        assert!(stats.peak_pending > 1000, "{stats:?}");
        let stats = responder.wait_idle(Duration::from_secs(2)).unwrap();
        assert_eq!(stats.received, N as u64 + 2, "{stats:?}");
        assert_eq!(stats.received_tcp, 2, "{stats:?}");
        assert_eq!(stats.answered, N as u64 + 2, "{stats:?}");

        responder.set_behaviour(Behaviour::silent());
        ns.enter(|| {
            let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
            socket
                .send_to(&query(RecordType::A, None).to_vec().unwrap(), listen)
                .unwrap();
            socket
                .set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            assert!(
                socket.recv_from(&mut [0u8; 512]).is_err(),
                "silent answered"
            );
        });
        assert_eq!(responder.stats().received, N as u64 + 3);
        responder.stop();
    }

    #[test]
    fn a_taken_address_is_an_error_naming_it() {
        crate::require_root_tools(&["ip"]).unwrap_or_else(|e| panic!("{e:#}"));
        let ns = NetNs::new("unit").unwrap();
        let listen: SocketAddr = "127.0.0.1:5331".parse().unwrap();
        let _first = Responder::start(&ns, &[listen], Behaviour::default()).unwrap();
        let err = Responder::start(&ns, &[listen], Behaviour::default())
            .err()
            .expect("the second bind must fail");
        let msg = format!("{err:#}");
        assert!(msg.contains("127.0.0.1:5331"), "{msg}");
    }
}

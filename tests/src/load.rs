//! A paced query load for tests that change things while traffic flows: query `i` is due
//! at `start + i / rate`, every query comes from a fresh UDP socket, many are in flight at
//! once, and each is timestamped so a test can line outcomes up with what it changed.
//!
//! [`crate::dns::query_load`] runs a fixed number of queries as fast as a few blocking
//! workers go; this keeps a steady rate instead, however slow some answers are.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    fmt,
    io::{self, ErrorKind},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    num::NonZero,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    sync::{
        Barrier, OnceLock,
        atomic::{AtomicBool, AtomicUsize, Ordering},
        mpsc::{self, RecvTimeoutError},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use hickory_proto::{
    op::{Message, Query},
    rr::RecordType,
};

use crate::{
    dns::{self, Verdict},
    netns::NetNs,
};

/// Worker threads at most; each has its own epoll set and its share of the schedule.
const MAX_WORKERS: usize = 4;
/// Sends between two looks at replies and timeouts, so a generator that has fallen
/// behind and is catching up still reads replies and expires queries on time.
const SEND_BATCH: usize = 32;
/// Falling further behind schedule than this is reported (once) on stderr.
const LAG_WARNING: Duration = Duration::from_secs(1);
const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);
const EPOLL_EVENTS: usize = 256;
/// File descriptors besides the in-flight sockets (stdio, epoll sets, the test harness).
const SPARE_FDS: u64 = 256;
/// How a worker that stopped because another one failed says so.
const ABORTED: &str = "stopped because another worker failed";

/// A steady stream of A queries for [`run_paced`].
#[derive(Debug, Clone)]
pub struct PacedLoad {
    /// Query `i` goes to `targets[i % targets.len()]`.
    pub targets: Vec<SocketAddr>,
    pub name: String,
    /// Queries per second over all targets.
    pub rate: u32,
    /// `rate * duration` queries are sent in all.
    pub duration: Duration,
    /// Per query; there are no retries. Up to `rate * timeout` queries are in flight.
    pub timeout: Duration,
}

impl PacedLoad {
    /// `rate` queries per second for `name` over `targets` for `duration`, 1 s timeout.
    pub fn new(targets: Vec<SocketAddr>, name: &str, rate: u32, duration: Duration) -> Self {
        Self {
            targets,
            name: name.to_owned(),
            rate,
            duration,
            timeout: Duration::from_secs(1),
        }
    }

    /// How many queries the load sends: `rate * duration`, rounded down.
    pub fn total(&self) -> usize {
        let total = u128::from(self.rate) * self.duration.as_nanos() / 1_000_000_000;
        usize::try_from(total).unwrap_or(usize::MAX)
    }

    fn validate(&self) -> Result<()> {
        ensure!(!self.targets.is_empty(), "PacedLoad.targets is empty");
        ensure!(
            self.rate > 0,
            "PacedLoad.rate must be at least 1 query per second"
        );
        ensure!(
            !self.timeout.is_zero(),
            "PacedLoad.timeout must be positive"
        );
        Ok(())
    }

    /// When query `i` is due, counted from the start of the run.
    fn due(&self, i: usize) -> Duration {
        let nanos = i as u128 * 1_000_000_000 / u128::from(self.rate.max(1));
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

/// One query of a [`run_paced`] run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryRecord {
    /// Taken just before the query was sent.
    pub sent: Instant,
    pub target: SocketAddr,
    /// The query's source port on the client (each query has a socket of its own).
    pub port: u16,
    /// The query's DNS message ID.
    pub id: u16,
    pub answer: Answer,
    /// From `sent` until the generator read the reply; None when nothing was read.
    pub rtt: Option<Duration>,
}

/// What became of one query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// A matching NOERROR reply from the target; its first A record.
    Answered(Ipv4Addr),
    /// Nothing came back within the timeout.
    Unanswered,
    /// A reply came from another address or port than the target.
    WrongSource(SocketAddr),
    /// A reply with a wrong id or question, an error rcode or no A record, garbage, or
    /// a send that failed (then `rtt` is None).
    Error(String),
}

/// Sends `load` from `ns`: query `i` at `start + i / rate` to `targets[i % targets.len()]`,
/// each from a fresh UDP socket (a fresh ephemeral port, as from independent clients: a
/// load balancer with per-flow affinity would pin a reused port to one backend). Returns
/// one record per query, `records[i]` being query `i`.
///
/// A generator that falls behind sends on as fast as it can, and says so on stderr once
/// it is more than a second late; [`summarize`]'s `achieved_rate` tells how fast it went.
/// `progress`, if given, is called about once a second with (sent so far, total).
///
/// Errors only for a bad `load` or a local failure (a socket that cannot be created, as
/// when `rate * timeout` sockets exceed the open-file limit), never for what the network
/// or server did: that is what [`Answer`] records.
pub fn run_paced(
    ns: &NetNs,
    load: &PacedLoad,
    progress: Option<&(dyn Fn(usize, usize) + Sync)>,
) -> Result<Vec<QueryRecord>> {
    run_paced_on_cpus(ns, load, &[], progress)
}

/// [`run_paced`] with one worker per entry of `cpus`, each pinned to that CPU, so the
/// queries (and the receive path of whatever handles them on the way, such as an XDP
/// program on a veth) run on every CPU listed, not wherever the scheduler puts them.
/// Empty `cpus`: as [`run_paced`], unpinned.
pub fn run_paced_on_cpus(
    ns: &NetNs,
    load: &PacedLoad,
    cpus: &[usize],
    progress: Option<&(dyn Fn(usize, usize) + Sync)>,
) -> Result<Vec<QueryRecord>> {
    load.validate()?;
    let question = Query::query(dns::parse_name(&load.name)?, RecordType::A);
    let mut request = Message::query();
    request.metadata.recursion_desired = false;
    request.add_query(question.clone());
    let template = request.to_vec().context("encoding the query")?;
    let total = load.total();
    raise_fd_limit(load);

    let workers = if cpus.is_empty() {
        std::thread::available_parallelism()
            .map_or(2, NonZero::get)
            .clamp(1, MAX_WORKERS)
    } else {
        cpus.len()
    }
    .min(total.max(1));
    let shared = Shared {
        ns,
        load,
        question: &question,
        template: &template,
        total,
        workers,
        cpus,
        sent: AtomicUsize::new(0),
        abort: AtomicBool::new(false),
        lag_reported: AtomicBool::new(false),
        ready: Barrier::new(workers),
        start: OnceLock::new(),
    };
    let per_worker = std::thread::scope(|scope| {
        let (done_tx, done_rx) = mpsc::channel::<()>();
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                let done_tx = done_tx.clone();
                let shared = &shared;
                scope.spawn(move || {
                    // Dropped when this worker ends, however it ends: the loop below
                    // stops when every sender is gone.
                    let _done = done_tx;
                    let result = shared.worker(w);
                    if result.is_err() {
                        shared.abort.store(true, Ordering::Relaxed);
                    }
                    result
                })
            })
            .collect();
        drop(done_tx);
        while let Err(RecvTimeoutError::Timeout) = done_rx.recv_timeout(PROGRESS_INTERVAL) {
            if let Some(progress) = progress {
                progress(shared.sent.load(Ordering::Relaxed), total);
            }
        }
        let mut per_worker = Vec::with_capacity(workers);
        // The error of a worker that failed, rather than of one it made stop.
        let (mut failed, mut stopped) = (None, None);
        for (w, handle) in handles.into_iter().enumerate() {
            match handle.join() {
                Ok(Ok(records)) => per_worker.push(records.into_iter()),
                Ok(Err(e)) => {
                    let slot = if e.to_string() == ABORTED {
                        &mut stopped
                    } else {
                        &mut failed
                    };
                    slot.get_or_insert(e.context(format!("paced load worker {w}")));
                }
                Err(payload) => std::panic::resume_unwind(payload),
            }
        }
        match failed.or(stopped) {
            Some(e) => Err(e),
            None => Ok(per_worker),
        }
    })?;

    // Worker w sent queries w, w + workers, ...: interleave back into query order.
    let mut per_worker = per_worker;
    let mut records = Vec::with_capacity(total);
    for i in 0..total {
        let record = per_worker[i % workers]
            .next()
            .with_context(|| format!("paced load worker {} lost query {i}", i % workers))?;
        records.push(record);
    }
    Ok(records)
}

/// Counts over the records of one [`run_paced`] run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PacedSummary {
    pub sent: usize,
    pub answered: usize,
    pub unanswered: usize,
    pub wrong_source: usize,
    pub errors: usize,
    /// Answered queries per first A record.
    pub by_answer: BTreeMap<Ipv4Addr, usize>,
    /// Queries per second between the first and the last send: below the asked rate
    /// when the generator could not keep up.
    pub achieved_rate: f64,
}

pub fn summarize(records: &[QueryRecord]) -> PacedSummary {
    let mut summary = PacedSummary {
        sent: records.len(),
        ..Default::default()
    };
    for record in records {
        match &record.answer {
            Answer::Answered(addr) => {
                summary.answered += 1;
                *summary.by_answer.entry(*addr).or_default() += 1;
            }
            Answer::Unanswered => summary.unanswered += 1,
            Answer::WrongSource(_) => summary.wrong_source += 1,
            Answer::Error(_) => summary.errors += 1,
        }
    }
    let first = records.iter().map(|r| r.sent).min();
    let last = records.iter().map(|r| r.sent).max();
    if let (Some(first), Some(last)) = (first, last) {
        let span = last.duration_since(first).as_secs_f64();
        if span > 0.0 {
            summary.achieved_rate = (records.len() - 1) as f64 / span;
        }
    }
    summary
}

impl fmt::Display for PacedSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} sent at {:.1}/s: {} answered, {} unanswered, {} wrong source, {} errors; answers:",
            self.sent,
            self.achieved_rate,
            self.answered,
            self.unanswered,
            self.wrong_source,
            self.errors
        )?;
        for (addr, n) in &self.by_answer {
            write!(f, " {addr}={n}")?;
        }
        Ok(())
    }
}

/// Everything the workers of one run share.
struct Shared<'a> {
    ns: &'a NetNs,
    load: &'a PacedLoad,
    question: &'a Query,
    /// The encoded query; each send patches in its own id.
    template: &'a [u8],
    total: usize,
    workers: usize,
    /// Worker `w` runs on `cpus[w]`; empty: anywhere.
    cpus: &'a [usize],
    sent: AtomicUsize,
    /// Set by a worker that failed, so the others stop instead of running out the clock.
    abort: AtomicBool,
    lag_reported: AtomicBool,
    /// Every worker has joined the namespace (or failed to) before the clock starts.
    ready: Barrier,
    start: OnceLock<Instant>,
}

/// A query sent and not yet answered or expired.
struct InFlight {
    socket: UdpSocket,
    port: u16,
    id: u16,
    sent: Instant,
}

impl Shared<'_> {
    /// Sends queries `w`, `w + workers`, ... on schedule and collects their records in
    /// that order.
    fn worker(&self, w: usize) -> Result<Vec<QueryRecord>> {
        let joined = self
            .ns
            .setns_current_thread()
            .and_then(|()| match self.cpus.get(w) {
                Some(&cpu) => pin_current_thread(cpu),
                None => Ok(()),
            });
        self.ready.wait();
        joined?;
        let start = *self.start.get_or_init(Instant::now);
        let load = self.load;
        // Queries w, w + workers, ... below total; local slot j is query w + j * workers.
        let mine = (self.total + self.workers - 1 - w) / self.workers;
        let query_of = |j: usize| w + j * self.workers;

        let mut epoll = Epoll::new()?;
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EPOLL_EVENTS];
        let mut buf = vec![0u8; 65_535];
        let mut ids = XorShift::new(Message::query().metadata.id, w);
        let mut records: Vec<Option<QueryRecord>> = vec![None; mine];
        let mut in_flight: HashMap<usize, InFlight> = HashMap::new();
        // Slots in send order: deadlines only grow, so expiry looks at the front only.
        let mut by_deadline: VecDeque<usize> = VecDeque::new();
        let mut next = 0;
        loop {
            if self.abort.load(Ordering::Relaxed) {
                bail!("{ABORTED}");
            }
            let mut batch = 0;
            while next < mine && batch < SEND_BATCH {
                let i = query_of(next);
                let due = start + load.due(i);
                let now = Instant::now();
                if due > now {
                    break;
                }
                self.report_lag(now - due, i);
                let target = load.targets[i % load.targets.len()];
                match self.send(&epoll, next, target, ids.next_id())? {
                    Ok(query) => {
                        in_flight.insert(next, query);
                        by_deadline.push_back(next);
                    }
                    Err(failed) => records[next] = Some(failed),
                }
                next += 1;
                batch += 1;
            }
            self.sent.fetch_add(batch, Ordering::Relaxed);

            let now = Instant::now();
            while let Some(&j) = by_deadline.front() {
                let Some(query) = in_flight.get(&j) else {
                    by_deadline.pop_front(); // answered already
                    continue;
                };
                if query.sent + load.timeout > now {
                    break;
                }
                by_deadline.pop_front();
                let target = load.targets[query_of(j) % load.targets.len()];
                // A last look: a reply that arrived while this thread was busy counts.
                let record = self
                    .receive(query, target, &mut buf)
                    .unwrap_or(QueryRecord {
                        sent: query.sent,
                        target,
                        port: query.port,
                        id: query.id,
                        answer: Answer::Unanswered,
                        rtt: None,
                    });
                in_flight.remove(&j);
                records[j] = Some(record);
            }
            if next >= mine && in_flight.is_empty() {
                break;
            }

            let next_due = (next < mine).then(|| start + load.due(query_of(next)));
            let next_expiry = by_deadline
                .front()
                .and_then(|j| in_flight.get(j))
                .map(|q| q.sent + load.timeout);
            let wake = match (next_due, next_expiry) {
                (Some(a), Some(b)) => a.min(b),
                (a, b) => a.or(b).unwrap_or(now),
            };
            // A full batch means more may be due already: only collect what is ready.
            let timeout = if batch == SEND_BATCH {
                Duration::ZERO
            } else {
                wake.saturating_duration_since(Instant::now())
            };
            let ready = epoll.wait(&mut events, timeout)?;
            for event in &events[..ready] {
                let j = usize::try_from(event.u64).context("epoll token out of range")?;
                let Some(query) = in_flight.get(&j) else {
                    continue;
                };
                let target = load.targets[query_of(j) % load.targets.len()];
                if let Some(record) = self.receive(query, target, &mut buf) {
                    in_flight.remove(&j);
                    records[j] = Some(record);
                }
            }
        }
        records
            .into_iter()
            .enumerate()
            .map(|(j, r)| r.with_context(|| format!("query {} has no record", query_of(j))))
            .collect()
    }

    /// Sends one query from a fresh socket registered in `epoll` under `slot`. The outer
    /// error is a local failure that ends the run; the inner one is a send the network
    /// refused, recorded like any other outcome.
    fn send(
        &self,
        epoll: &Epoll,
        slot: usize,
        target: SocketAddr,
        id: u16,
    ) -> Result<Result<InFlight, QueryRecord>> {
        let bind: SocketAddr = match target {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        // Unconnected on purpose: a connected socket would silently drop a reply from
        // the wrong source, and that is what WrongSource must catch.
        let socket = UdpSocket::bind(bind).map_err(|e| {
            let hint = if e.raw_os_error() == Some(libc::EMFILE) {
                " (rate * timeout sockets in flight exceed the open-file limit)"
            } else {
                ""
            };
            anyhow::Error::new(e).context(format!("creating a UDP socket{hint}"))
        })?;
        socket
            .set_nonblocking(true)
            .context("making a UDP socket non-blocking")?;
        epoll.add(socket.as_raw_fd(), slot as u64)?;
        let mut bytes = self.template.to_vec();
        bytes[..2].copy_from_slice(&id.to_be_bytes());
        let port = socket
            .local_addr()
            .context("reading a UDP socket's port")?
            .port();
        let sent = Instant::now();
        Ok(match socket.send_to(&bytes, target) {
            Ok(_) => Ok(InFlight {
                socket,
                port,
                id,
                sent,
            }),
            Err(e) => Err(QueryRecord {
                sent,
                target,
                port,
                id,
                answer: Answer::Error(format!("sending to {target}: {e}")),
                rtt: None,
            }),
        })
    }

    /// Reads the reply to `query`, if one is waiting.
    fn receive(&self, query: &InFlight, target: SocketAddr, buf: &mut [u8]) -> Option<QueryRecord> {
        let (answer, rtt) = match query.socket.recv_from(buf) {
            Ok((len, from)) => {
                let rtt = query.sent.elapsed();
                let answer = if from != target {
                    Answer::WrongSource(from)
                } else {
                    match dns::check_reply(query.id, self.question, &buf[..len]) {
                        Verdict::Answered(addrs) => match addrs.first() {
                            Some(addr) => Answer::Answered(*addr),
                            None => Answer::Error("NOERROR without an A record".to_owned()),
                        },
                        Verdict::Unanswered => Answer::Unanswered,
                        Verdict::WrongSource(from) => Answer::WrongSource(from),
                        Verdict::Error(why) => Answer::Error(why),
                    }
                };
                (answer, Some(rtt))
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {
                return None;
            }
            Err(e) => (Answer::Error(format!("receiving: {e}")), None),
        };
        Some(QueryRecord {
            sent: query.sent,
            target,
            port: query.port,
            id: query.id,
            answer,
            rtt,
        })
    }

    fn report_lag(&self, lag: Duration, i: usize) {
        if lag > LAG_WARNING && !self.lag_reported.swap(true, Ordering::Relaxed) {
            eprintln!(
                "testbed: paced load is {lag:?} behind schedule at query {i} of {}; sending on, \
                 the summary's achieved rate says how fast it really went",
                self.total
            );
        }
    }
}

/// Moves the calling thread to `cpu` (and only there).
fn pin_current_thread(cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET writes within it for any
    // cpu below CPU_SETSIZE, checked first; pid 0 is the calling thread.
    unsafe {
        ensure!(
            cpu < libc::CPU_SETSIZE as usize,
            "CPU {cpu} is beyond CPU_SETSIZE"
        );
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(io::Error::last_os_error())
                .with_context(|| format!("pinning a paced load worker to CPU {cpu}"));
        }
    }
    Ok(())
}

/// Raises the soft open-file limit towards `rate * timeout` in-flight sockets, as far as
/// the hard limit allows. Best effort: if it stays too low, socket creation says so.
fn raise_fd_limit(load: &PacedLoad) {
    let needed = (f64::from(load.rate) * load.timeout.as_secs_f64()).ceil() as u64 + SPARE_FDS;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < needed {
            limit.rlim_cur = needed.min(limit.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// An epoll set with a nanosecond timeout (epoll_pwait2, Linux 5.11), so queries leave
/// on schedule rather than on millisecond ticks.
struct Epoll {
    fd: OwnedFd,
    /// epoll_pwait2 is missing (ENOSYS): fall back to epoll_wait's milliseconds.
    coarse: bool,
}

impl Epoll {
    fn new() -> io::Result<Self> {
        // SAFETY: plain syscall; a non-negative result is a new fd that we own.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            // SAFETY: fd was just returned by epoll_create1 and nothing else owns it.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            coarse: false,
        })
    }

    /// Watches `fd` for input; closing `fd` removes it again (we never dup sockets).
    fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let mut event = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token,
        };
        // SAFETY: both fds are open and `event` outlives the call.
        let rc =
            unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits up to `timeout` and returns how many of `events` were filled.
    fn wait(&mut self, events: &mut [libc::epoll_event], timeout: Duration) -> io::Result<usize> {
        let max = libc::c_int::try_from(events.len()).unwrap_or(libc::c_int::MAX);
        let rc = if self.coarse {
            // Rounded up: waking early would only spin.
            let ms = timeout.as_nanos().div_ceil(1_000_000);
            let ms = libc::c_int::try_from(ms).unwrap_or(libc::c_int::MAX);
            // SAFETY: `events` is valid for `max` entries for the duration of the call.
            unsafe { libc::epoll_wait(self.fd.as_raw_fd(), events.as_mut_ptr(), max, ms) }
        } else {
            let ts = libc::timespec {
                tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
                tv_nsec: libc::c_long::from(timeout.subsec_nanos()),
            };
            // SAFETY: as above; a null sigmask means epoll_wait's semantics.
            unsafe {
                libc::epoll_pwait2(
                    self.fd.as_raw_fd(),
                    events.as_mut_ptr(),
                    max,
                    &ts,
                    std::ptr::null(),
                )
            }
        };
        if rc >= 0 {
            return Ok(rc as usize);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => Ok(0),
            Some(libc::ENOSYS) if !self.coarse => {
                self.coarse = true;
                self.wait(events, timeout)
            }
            _ => Err(e),
        }
    }
}

/// Query ids: not security, just not all alike (xorshift32, seeded per worker).
struct XorShift(u32);

impl XorShift {
    fn new(seed: u16, worker: usize) -> Self {
        let seed = (u32::from(seed) << 16) ^ (worker as u32).wrapping_mul(0x9E37_79B9);
        Self(seed.max(1))
    }

    fn next_id(&mut self) -> u16 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.0 = x;
        (x >> 16) as u16
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use hickory_proto::rr::{RData, Record, rdata::A};

    use super::*;

    #[test]
    fn schedule_and_total() {
        let load = PacedLoad::new(
            vec!["127.0.0.1:53".parse().unwrap()],
            "whoami.example",
            5000,
            Duration::from_secs(5),
        );
        assert_eq!(load.total(), 25_000);
        assert_eq!(load.due(1), Duration::from_micros(200));
        assert_eq!(load.due(5000), Duration::from_secs(1));
        let odd = PacedLoad {
            rate: 3,
            duration: Duration::from_millis(1500),
            ..load
        };
        assert_eq!(
            (odd.total(), odd.due(2)),
            (4, Duration::from_nanos(666_666_666))
        );
    }

    #[test]
    fn summary_counts_every_outcome_and_the_rate() {
        let t0 = Instant::now();
        let target: SocketAddr = "10.0.0.2:53".parse().unwrap();
        let a = Ipv4Addr::new(10, 0, 0, 2);
        let answers = [
            Answer::Answered(a),
            Answer::Answered(a),
            Answer::Unanswered,
            Answer::WrongSource("10.0.0.9:53".parse().unwrap()),
            Answer::Error("rcode REFUSED".to_owned()),
        ];
        let records: Vec<_> = answers
            .into_iter()
            .enumerate()
            .map(|(i, answer)| QueryRecord {
                sent: t0 + Duration::from_millis(250 * i as u64),
                target,
                port: 40000,
                id: i as u16,
                answer,
                rtt: None,
            })
            .collect();
        let summary = summarize(&records);
        assert_eq!(
            (summary.sent, summary.answered, summary.unanswered),
            (5, 2, 1)
        );
        assert_eq!((summary.wrong_source, summary.errors), (1, 1));
        assert_eq!(summary.by_answer, BTreeMap::from([(a, 2)]));
        assert!((summary.achieved_rate - 4.0).abs() < 1e-9, "{summary}");
        assert!(
            summary
                .to_string()
                .starts_with("5 sent at 4.0/s: 2 answered"),
            "{summary}"
        );
        assert_eq!(summarize(&[]).achieved_rate, 0.0);
    }

    /// Answers every query on `listen` with A `answer`, from `reply_from` (another local
    /// socket for a wrong-source reply) until `stop`; returns the source ports seen.
    fn fake_server(
        ns: &NetNs,
        listen: &str,
        reply_from: Option<&str>,
        answer: Ipv4Addr,
        ready: &Barrier,
        stop: &AtomicBool,
    ) -> Vec<u16> {
        ns.setns_current_thread().unwrap();
        let socket = UdpSocket::bind(listen).unwrap();
        let other = reply_from.map(|addr| UdpSocket::bind(addr).unwrap());
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        ready.wait();
        let mut ports = Vec::new();
        let mut buf = [0u8; 512];
        while !stop.load(Ordering::Relaxed) {
            let Ok((len, from)) = socket.recv_from(&mut buf) else {
                continue;
            };
            ports.push(from.port());
            let request = Message::from_vec(&buf[..len]).unwrap();
            let mut reply = Message::response(request.metadata.id, request.metadata.op_code);
            reply.add_query(request.queries[0].clone());
            reply.add_answer(Record::from_rdata(
                request.queries[0].name.clone(),
                60,
                RData::A(A(answer)),
            ));
            let out = other.as_ref().unwrap_or(&socket);
            out.send_to(&reply.to_vec().unwrap(), from).unwrap();
        }
        ports
    }

    #[test]
    fn paced_load_keeps_time_order_and_classifies() {
        crate::require_root_tools(&["ip"]).unwrap_or_else(|e| panic!("{e:#}"));
        let ns = NetNs::new("unit").unwrap();
        let good: SocketAddr = "127.0.0.1:5310".parse().unwrap();
        let wrong: SocketAddr = "127.0.0.1:5311".parse().unwrap();
        let silent: SocketAddr = "127.0.0.1:5312".parse().unwrap();
        let answer = Ipv4Addr::new(10, 9, 8, 7);
        let load = PacedLoad {
            timeout: Duration::from_millis(200),
            ..PacedLoad::new(
                vec![good, wrong, silent],
                "whoami.example",
                1000,
                Duration::from_millis(600),
            )
        };
        let ready = Barrier::new(3);
        let stop = AtomicBool::new(false);
        let ticks = AtomicUsize::new(0);
        let (records, ports) = std::thread::scope(|scope| {
            let (ns, ready, stop) = (&ns, &ready, &stop);
            let good_server =
                scope.spawn(move || fake_server(ns, "127.0.0.1:5310", None, answer, ready, stop));
            let wrong_server = scope.spawn(move || {
                fake_server(
                    ns,
                    "127.0.0.1:5311",
                    Some("127.0.0.2:5311"),
                    answer,
                    ready,
                    stop,
                )
            });
            ready.wait();
            let progress = |sent: usize, total: usize| {
                assert!(sent <= total);
                ticks.fetch_add(1, Ordering::Relaxed);
            };
            let records = run_paced(ns, &load, Some(&progress));
            stop.store(true, Ordering::Relaxed);
            let ports = good_server.join().unwrap();
            wrong_server.join().unwrap();
            (records.unwrap(), ports)
        });

        assert_eq!(records.len(), 600);
        let t0 = records[0].sent;
        for (i, record) in records.iter().enumerate() {
            assert_eq!(record.target, load.targets[i % 3], "query {i}");
            let expected = match i % 3 {
                0 => Answer::Answered(answer),
                1 => Answer::WrongSource("127.0.0.2:5311".parse().unwrap()),
                _ => Answer::Unanswered,
            };
            assert_eq!(record.answer, expected, "query {i}");
            assert_eq!(record.rtt.is_some(), i % 3 != 2, "query {i}: {record:?}");
            // On schedule: i ms after query 0, give or take scheduling noise.
            let offset = record.sent.duration_since(t0).as_secs_f64() * 1000.0;
            assert!(
                (offset - i as f64).abs() < 25.0,
                "query {i} sent at {offset:.1} ms"
            );
        }
        let summary = summarize(&records);
        assert!((summary.achieved_rate - 1000.0).abs() < 50.0, "{summary}");
        // Fresh sockets: ports repeat only by the kernel's random choice.
        let distinct: HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(ports.len(), 200);
        assert!(distinct.len() >= 195, "{} distinct ports", distinct.len());
        assert!(ticks.load(Ordering::Relaxed) <= 1);
    }

    /// IPv6 targets work as IPv4 ones do, mixed in one load.
    #[test]
    fn paced_load_over_ipv6() {
        crate::require_root_tools(&["ip"]).unwrap_or_else(|e| panic!("{e:#}"));
        let ns = NetNs::new("unit").unwrap();
        let good6: SocketAddr = "[::1]:5320".parse().unwrap();
        let good4: SocketAddr = "127.0.0.1:5321".parse().unwrap();
        let silent6: SocketAddr = "[::1]:5322".parse().unwrap();
        let answer = Ipv4Addr::new(10, 9, 8, 6);
        let load = PacedLoad {
            timeout: Duration::from_millis(200),
            ..PacedLoad::new(
                vec![good6, good4, silent6],
                "whoami.example",
                1000,
                Duration::from_millis(300),
            )
        };
        let ready = Barrier::new(3);
        let stop = AtomicBool::new(false);
        let records = std::thread::scope(|scope| {
            let (ns, ready, stop) = (&ns, &ready, &stop);
            let six = scope.spawn(move || fake_server(ns, "[::1]:5320", None, answer, ready, stop));
            let four =
                scope.spawn(move || fake_server(ns, "127.0.0.1:5321", None, answer, ready, stop));
            ready.wait();
            let records = run_paced(ns, &load, None);
            stop.store(true, Ordering::Relaxed);
            assert_eq!(six.join().unwrap().len(), 100);
            assert_eq!(four.join().unwrap().len(), 100);
            records.unwrap()
        });
        assert_eq!(records.len(), 300);
        for (i, record) in records.iter().enumerate() {
            let expected = match i % 3 {
                2 => Answer::Unanswered,
                _ => Answer::Answered(answer),
            };
            assert_eq!(record.answer, expected, "query {i} to {}", record.target);
        }
    }

    /// A CPU the machine lacks ends the run with an error naming it, before any send.
    #[test]
    fn pinning_to_a_missing_cpu_is_an_error() {
        crate::require_root_tools(&["ip"]).unwrap_or_else(|e| panic!("{e:#}"));
        let ns = NetNs::new("unit").unwrap();
        let load = PacedLoad::new(
            vec!["127.0.0.1:5323".parse().unwrap()],
            "whoami.example",
            100,
            Duration::from_millis(100),
        );
        let err = run_paced_on_cpus(&ns, &load, &[0, 1000], None).unwrap_err();
        assert!(format!("{err:#}").contains("CPU 1000"), "{err:#}");
    }

    #[test]
    fn bad_loads_are_rejected() {
        let load = PacedLoad::new(vec![], "whoami.example", 10, Duration::from_secs(1));
        let err = load.validate().unwrap_err().to_string();
        assert!(err.contains("targets"), "{err}");
        let load = PacedLoad {
            targets: vec!["127.0.0.1:53".parse().unwrap()],
            rate: 0,
            ..load
        };
        let err = load.validate().unwrap_err().to_string();
        assert!(err.contains("rate"), "{err}");
    }
}

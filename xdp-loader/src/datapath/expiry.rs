//! Queries nobody answered: their `QUERIES` records removed once older than
//! `[flows] query_timeout`, counted as timed out (in all, `QUERY_EVENTS`, and
//! per backend, `TIMED_OUT`, which `least_outstanding` subtracts from the
//! backend's queries in flight), and the peak of queries in flight kept, all
//! where `dnsteer stats` reads them.
//!
//! The kernel deletes a query's record when its answer passes; only the
//! unanswered ones are left to this sweep, on a thread of its own so that
//! neither the syscalls nor a large table hold up the daemon's event loop.
//! The table is read with `BPF_MAP_LOOKUP_BATCH` (Linux 5.6), a bucket at a
//! time, which stays correct while the kernel deletes records under it (a
//! `get_next_key` walk restarts from the first key when its cursor is deleted).

use std::{
    collections::BTreeMap,
    io,
    mem::size_of,
    os::fd::{AsFd, AsRawFd},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    maps::{Array, HashMap, IterableMap, MapData, PerCpuArray, PerCpuValues},
    util::nr_cpus,
};
use log::warn;
use xdp_common::{QueryEvent, QueryKey, QueryValue, names};

/// How often the queries in flight are sampled for their peak.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// Records read per `BPF_MAP_LOOKUP_BATCH` call.
const BATCH: usize = 1024;

/// `enum bpf_cmd` (include/uapi/linux/bpf.h).
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// What one sweep found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Sweep {
    /// Records present.
    pub seen: u64,
    /// Records past the timeout that this sweep deleted.
    pub removed: u64,
    /// The same, per backend slot.
    pub by_slot: BTreeMap<u32, u64>,
}

/// The sweeping thread; stopped and joined on drop.
pub struct Sweeper {
    stop: Arc<AtomicBool>,
    timeout_ms: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Sweeper {
    /// Starts sweeping `ebpf`'s query table for records older than `timeout`.
    pub fn start(ebpf: &Ebpf, timeout: Duration) -> Result<Self> {
        let id = |name: &str| -> Result<u32> {
            let map = ebpf
                .map(name)
                .with_context(|| format!("the eBPF object has no {name} map"))?;
            Ok(map_data(map)?.info()?.id())
        };
        // Handles of its own, so the thread owns what it touches.
        let queries = MapData::from_id(id(names::QUERIES)?).context("opening QUERIES")?;
        let events = MapData::from_id(id(names::QUERY_EVENTS)?).context("opening QUERY_EVENTS")?;
        let timed_out = MapData::from_id(id(names::TIMED_OUT)?).context("opening TIMED_OUT")?;
        let queries: HashMap<MapData, QueryKey, QueryValue> =
            HashMap::try_from(aya::maps::Map::HashMap(queries))?;
        let events: PerCpuArray<MapData, u64> =
            PerCpuArray::try_from(aya::maps::Map::PerCpuArray(events))?;
        let timed_out: Array<MapData, u64> = Array::try_from(aya::maps::Map::Array(timed_out))?;
        let stop = Arc::new(AtomicBool::new(false));
        let timeout_ms = Arc::new(AtomicU64::new(millis(timeout)));
        let thread = thread::Builder::new()
            .name("dnsteer-expiry".into())
            .spawn({
                let (stop, timeout_ms) = (stop.clone(), timeout_ms.clone());
                move || run(queries, events, timed_out, &stop, &timeout_ms)
            })
            .context("starting the query expiry thread")?;
        Ok(Self {
            stop,
            timeout_ms,
            thread: Some(thread),
        })
    }

    /// Applies a reloaded `[flows] query_timeout` from the next sweep on.
    pub fn set_timeout(&self, timeout: Duration) {
        self.timeout_ms.store(millis(timeout), Ordering::Relaxed);
    }
}

impl Drop for Sweeper {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn map_data(map: &aya::maps::Map) -> Result<&MapData> {
    use aya::maps::Map;
    match map {
        Map::HashMap(m) | Map::PerCpuArray(m) | Map::Array(m) => Ok(m),
        _ => anyhow::bail!("unexpected map type"),
    }
}

fn millis(d: Duration) -> u64 {
    d.as_millis().try_into().unwrap_or(u64::MAX)
}

/// A sweep every quarter of the timeout (at most every second, at least every
/// `SAMPLE_EVERY`): a record outlives its timeout by a quarter at most.
fn sweep_every(timeout_ms: u64) -> Duration {
    Duration::from_millis(timeout_ms / 4).clamp(SAMPLE_EVERY, Duration::from_secs(1))
}

fn run(
    mut queries: HashMap<MapData, QueryKey, QueryValue>,
    mut events: PerCpuArray<MapData, u64>,
    mut timed_out: Array<MapData, u64>,
    stop: &AtomicBool,
    timeout_ms: &AtomicU64,
) {
    let mut last_sweep = Instant::now();
    let mut warned = false;
    while !stop.load(Ordering::Relaxed) {
        thread::sleep(SAMPLE_EVERY);
        let timeout = timeout_ms.load(Ordering::Relaxed);
        let result = (|| -> Result<()> {
            if last_sweep.elapsed() >= sweep_every(timeout) {
                last_sweep = Instant::now();
                let swept = sweep(&mut queries, Duration::from_millis(timeout))?;
                if swept.removed > 0 {
                    add(&mut events, QueryEvent::TimedOut, swept.removed)?;
                }
                for (slot, n) in swept.by_slot {
                    let now = timed_out.get(&slot, 0).unwrap_or(0);
                    timed_out
                        .set(slot, now + n, 0)
                        .with_context(|| format!("writing TIMED_OUT[{slot}]"))?;
                }
            }
            let in_flight = in_flight(&events)?;
            if in_flight > read(&events, QueryEvent::PeakInFlight)? {
                set(&mut events, QueryEvent::PeakInFlight, in_flight)?;
            }
            Ok(())
        })();
        match result {
            Ok(()) => warned = false,
            Err(err) if !warned => {
                warn!("query expiry: {err:#}; retrying");
                warned = true;
            }
            Err(_) => {}
        }
    }
}

/// Queries in flight now: inserted, less answered and timed out.
pub fn in_flight(events: &PerCpuArray<MapData, u64>) -> Result<u64> {
    let inserted = read(events, QueryEvent::Inserted)?;
    let answered = read(events, QueryEvent::Answered)?;
    let timed_out = read(events, QueryEvent::TimedOut)?;
    Ok(inserted.saturating_sub(answered).saturating_sub(timed_out))
}

/// A `QUERY_EVENTS` counter, summed over CPUs.
pub fn read(events: &PerCpuArray<MapData, u64>, event: QueryEvent) -> Result<u64> {
    Ok(events
        .get(&(event as u32), 0)
        .with_context(|| format!("reading QUERY_EVENTS[{}]", event.name()))?
        .iter()
        .sum())
}

/// Adds `n` to a loader-kept counter (in CPU 0's slot; the kernel never writes it).
fn add(events: &mut PerCpuArray<MapData, u64>, event: QueryEvent, n: u64) -> Result<()> {
    let now = read(events, event)?;
    set(events, event, now + n)
}

/// Sets a loader-kept counter or gauge to `value`.
fn set(events: &mut PerCpuArray<MapData, u64>, event: QueryEvent, value: u64) -> Result<()> {
    let cpus = nr_cpus().map_err(|(_, e)| e).context("counting CPUs")?;
    let mut values = vec![0u64; cpus];
    values[0] = value;
    let values = PerCpuValues::try_from(values)?;
    events
        .set(event as u32, values, 0)
        .with_context(|| format!("writing QUERY_EVENTS[{}]", event.name()))
}

/// Deletes the records older than `timeout` (by the kernel's monotonic clock,
/// which `bpf_ktime_get_ns` reads).
pub fn sweep(
    queries: &mut HashMap<MapData, QueryKey, QueryValue>,
    timeout: Duration,
) -> Result<Sweep> {
    let now = monotonic_ns();
    let timeout = timeout.as_nanos() as u64;
    let mut stale = Vec::new();
    let mut seen = 0;
    for_each(IterableMap::map(queries), |key, value| {
        seen += 1;
        if now.saturating_sub(value.sent_ns) > timeout {
            stale.push((*key, value.slot));
        }
    })?;
    // A record's answer may have come since it was read: the kernel deleted
    // it then, and counted it answered.
    let mut by_slot = BTreeMap::new();
    for (key, slot) in &stale {
        if queries.remove(key).is_ok() {
            *by_slot.entry(*slot).or_insert(0) += 1;
        }
    }
    Ok(Sweep {
        seen,
        removed: by_slot.values().sum(),
        by_slot,
    })
}

/// Calls `f` for every record, read `BATCH` at a time.
fn for_each(map: &MapData, mut f: impl FnMut(&QueryKey, &QueryValue)) -> Result<()> {
    #[repr(C)]
    struct BatchAttr {
        in_batch: u64,
        out_batch: u64,
        keys: u64,
        values: u64,
        count: u32,
        map_fd: u32,
        elem_flags: u64,
        flags: u64,
    }
    let fd = map.fd().as_fd().as_raw_fd();
    let mut keys = vec![QueryKey::default(); BATCH];
    let mut values = vec![QueryValue::default(); BATCH];
    // A hash map's batch cursor is a bucket index.
    let (mut cursor_in, mut cursor_out) = (0u32, 0u32);
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                &cursor_in as *const u32 as u64
            },
            out_batch: &mut cursor_out as *mut u32 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: BATCH as u32,
            map_fd: fd as u32,
            elem_flags: 0,
            flags: 0,
        };
        // SAFETY: `attr` is a valid `bpf_attr` for BPF_MAP_LOOKUP_BATCH; the
        // buffers hold `count` keys and values of the map's sizes and outlive the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &mut attr as *mut BatchAttr,
                size_of::<BatchAttr>() as u32,
            )
        };
        let err = (rc != 0).then(io::Error::last_os_error);
        let n = (attr.count as usize).min(BATCH);
        for i in 0..n {
            f(&keys[i], &values[i]);
        }
        match err {
            None => {}
            // The last batch.
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            Some(e) => return Err(e).context("reading QUERIES (BPF_MAP_LOOKUP_BATCH)"),
        }
        first = false;
        cursor_in = cursor_out;
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds, the clock of `bpf_ktime_get_ns`.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

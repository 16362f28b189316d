//! The sources of desired state, and the one queue they feed.
//!
//! Every source runs as a task of its own and sends [`Event`]s; the daemon's
//! loop ([`super::run`]) takes them one at a time and applies each through the
//! reconciler ([`crate::live::Live`], owned by the data path). Sources never
//! write a map, and observers (stats, metrics) never send an event.
//!
//! Today's sources: the config file ([`config_file`]: edits and SIGHUP), the
//! control socket (`dnsteer backends`, [`crate::control::server`]), the
//! health probes ([`crate::health::Monitor`]) and a clock ([`ticks`]) on which
//! passive health judges the backends' answers. A new source, such as a
//! Kubernetes EndpointSlice watch, is a task spawned in [`super::run`] next to
//! these that sends [`Event::Change`] (e.g. `Change::Set` with the ready
//! endpoints of a service) on a clone of the [`Events`] sender; it touches no
//! map code.

use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use tokio::{
    signal::unix::Signal,
    sync::{mpsc, oneshot},
};

use crate::{
    control::{Request, Response},
    health::ProbeResult,
    kubernetes::Update,
    live::Change,
};

/// What a source asks of the daemon.
#[derive(Debug)]
pub enum Event {
    /// Read the config file again and make the maps match it; says why
    /// (SIGHUP, or the file changed).
    Reload(&'static str),
    /// A `dnsteer backends` request; the answer goes back on the sender.
    Request(Request, oneshot::Sender<Response>),
    /// A change to one service's backend set from a source that needs no
    /// answer; `source` names it in the log.
    Change {
        service: String,
        change: Change,
        source: &'static str,
    },
    /// One health probe's outcome.
    Probe(ProbeResult),
    /// What a Kubernetes watch says: a service's desired backends (or listen
    /// addresses), or the watch's own state.
    Kubernetes(Update),
    /// A second passed: time to judge the backends' answers (passive health).
    Tick,
}

/// Where sources send their events.
pub type Events = mpsc::Sender<Event>;

/// How many events may wait for the daemon; a source waits when it is this far behind.
pub const QUEUE: usize = 64;

/// Passes a Kubernetes source's updates on as [`Event::Kubernetes`], until
/// the daemon is gone.
pub async fn kubernetes(mut from: mpsc::UnboundedReceiver<Update>, events: Events) {
    while let Some(update) = from.recv().await {
        if events.send(Event::Kubernetes(update)).await.is_err() {
            return;
        }
    }
}

/// Sends [`Event::Reload`] when the config file at `path` changes (checked
/// every second) or on SIGHUP, until the daemon is gone.
pub async fn config_file(path: PathBuf, mut sighup: Signal, events: Events) {
    let mut seen = stamp(&path);
    let mut tick = tokio::time::interval(WATCH_INTERVAL);
    loop {
        let why = tokio::select! {
            _ = sighup.recv() => {
                seen = stamp(&path).or(seen);
                "SIGHUP"
            }
            _ = tick.tick() => {
                let now = stamp(&path);
                // A missing file is an editor mid-save: wait for it to come back.
                if now.is_none() || now == seen {
                    continue;
                }
                seen = now;
                "config file changed"
            }
        };
        if events.send(Event::Reload(why)).await.is_err() {
            return;
        }
    }
}

/// Sends [`Event::Tick`] every second, until the daemon is gone.
pub async fn ticks(events: Events) {
    let mut tick = tokio::time::interval(TICK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if events.send(Event::Tick).await.is_err() {
            return;
        }
    }
}

/// How often passive health reads the backends' answers.
const TICK_INTERVAL: Duration = crate::health::passive::TICK;

/// Passes what arrives on `from` to the daemon as `wrap` makes it, until
/// either side is gone.
pub async fn forward<T>(mut from: mpsc::Receiver<T>, events: Events, wrap: fn(T) -> Event) {
    while let Some(item) = from.recv().await {
        if events.send(wrap(item)).await.is_err() {
            return;
        }
    }
}

/// The config file's identity and contents' stamp, to notice edits (also an
/// editor's write-to-temp-and-rename, which changes the inode).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some(Stamp {
        dev: meta.dev(),
        ino: meta.ino(),
        len: meta.len(),
        mtime_ns: meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
    })
}

/// How often the config file is checked for edits.
const WATCH_INTERVAL: Duration = Duration::from_secs(1);

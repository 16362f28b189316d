//! Health probing: every backend of a service with `[service.health]` gets a
//! real DNS query every `interval`, sent to the backend itself. `fall` failed
//! probes in a row take it out of selection, `rise` good ones bring it back.
//!
//! The probes run as tasks; their outcomes come back to the run loop, which
//! feeds them to [`Monitor::record`] and applies the transitions it returns
//! (`Live::set_health`). Keeping the state machine out of the tasks means one
//! owner decides, in one order, and it is unit tested without a network.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use tokio::{sync::mpsc, task::JoinHandle, time::MissedTickBehavior};

use crate::config::{HealthCheck, human};

pub mod passive;
pub mod probe;

use probe::{Probe, ProbeError, Transport};

/// A backend's health as `dnsteer run` probes it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthStats {
    /// `up` or `down`. A backend starts up.
    pub state: String,
    /// Round trip of the last probe that got a reply, in microseconds.
    pub last_rtt_us: Option<u64>,
    /// Why the last probe failed; null when it succeeded.
    pub last_error: Option<String>,
    /// Changes between up and down since the backend joined.
    pub transitions: u64,
    pub probes_ok: u64,
    pub probes_failed: u64,
}

/// One backend's probe history, as the state machine needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    up: bool,
    /// Outcomes in a row that contradict `up` (failures while up, successes while down).
    streak: u32,
    last_rtt: Option<Duration>,
    last_error: Option<String>,
    transitions: u64,
    probes_ok: u64,
    probes_failed: u64,
}

impl Default for Health {
    /// A backend starts up: it takes traffic from the start, and a dead one is
    /// taken out after `fall` probes.
    fn default() -> Self {
        Self {
            up: true,
            streak: 0,
            last_rtt: None,
            last_error: None,
            transitions: 0,
            probes_ok: 0,
            probes_failed: 0,
        }
    }
}

impl Health {
    pub fn is_up(&self) -> bool {
        self.up
    }

    /// Records one probe's outcome; returns the new state when it changed.
    pub fn record(
        &mut self,
        outcome: &Result<Duration, ProbeError>,
        fall: u32,
        rise: u32,
    ) -> Option<bool> {
        let good = outcome.is_ok();
        match outcome {
            Ok(rtt) => {
                self.probes_ok += 1;
                self.last_rtt = Some(*rtt);
                self.last_error = None;
            }
            Err(err) => {
                self.probes_failed += 1;
                self.last_error = Some(err.to_string());
            }
        }
        if good == self.up {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = if self.up { fall } else { rise };
        if self.streak < needed.max(1) {
            return None;
        }
        self.up = good;
        self.streak = 0;
        self.transitions += 1;
        Some(self.up)
    }

    pub fn stats(&self) -> HealthStats {
        HealthStats {
            state: if self.up { "up" } else { "down" }.to_owned(),
            last_rtt_us: self.last_rtt.map(|d| d.as_micros() as u64),
            last_error: self.last_error.clone(),
            transitions: self.transitions,
            probes_ok: self.probes_ok,
            probes_failed: self.probes_failed,
        }
    }
}

/// A service's backend, as the monitor names it.
pub type Target = (String, SocketAddr);

/// One probe's outcome, from a prober task to the run loop.
#[derive(Debug)]
pub struct ProbeResult {
    target: Target,
    /// The prober that sent it: results of a replaced prober are ignored.
    prober: u64,
    outcome: Result<Duration, ProbeError>,
}

/// A change of a backend's health, for the run loop to apply and log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub service: String,
    pub backend: SocketAddr,
    pub up: bool,
    /// What the log line says after the state, e.g. "after 3 failed probes (no reply within 500ms)".
    pub detail: String,
}

struct Prober {
    id: u64,
    check: HealthCheck,
    transport: Transport,
    task: JoinHandle<()>,
    health: Health,
    since: Instant,
}

/// The probers of every health-checked backend, and their states.
pub struct Monitor {
    results: mpsc::Sender<ProbeResult>,
    probers: BTreeMap<Target, Prober>,
    next_id: u64,
}

/// Results waiting for the run loop; a prober waits when the loop is this far behind.
const RESULT_QUEUE: usize = 1024;

impl Monitor {
    /// A monitor probing nothing yet, and the receiving end of its results.
    pub fn new() -> (Self, mpsc::Receiver<ProbeResult>) {
        let (results, rx) = mpsc::channel(RESULT_QUEUE);
        let monitor = Self {
            results,
            probers: BTreeMap::new(),
            next_id: 0,
        };
        (monitor, rx)
    }

    /// Probes exactly `wanted`: starts probers for new targets, restarts those
    /// whose check changed (keeping their state), stops the rest. Returns the
    /// targets that were down and are no longer probed: they count as up now.
    ///
    /// Must be called inside a tokio runtime.
    pub fn reconcile(
        &mut self,
        wanted: &BTreeMap<Target, (HealthCheck, Transport)>,
    ) -> Vec<Target> {
        let mut released = Vec::new();
        let gone: Vec<Target> = self
            .probers
            .keys()
            .filter(|t| !wanted.contains_key(*t))
            .cloned()
            .collect();
        for target in gone {
            let prober = self.probers.remove(&target).expect("listed above");
            prober.task.abort();
            if !prober.health.is_up() {
                released.push(target);
            }
        }
        for (target, (check, transport)) in wanted {
            if let Some(prober) = self.probers.get(target)
                && prober.check == *check
                && prober.transport == *transport
            {
                continue;
            }
            let id = self.next_id;
            self.next_id += 1;
            let task = tokio::spawn(probe_loop(
                target.clone(),
                id,
                Probe {
                    query: check.query.clone(),
                    transport: *transport,
                    timeout: check.timeout,
                    expect_rcode: check.expect_rcode,
                },
                check.interval,
                self.results.clone(),
            ));
            let (health, since) = match self.probers.remove(target) {
                Some(old) => {
                    old.task.abort();
                    (old.health, old.since)
                }
                None => (Health::default(), Instant::now()),
            };
            self.probers.insert(
                target.clone(),
                Prober {
                    id,
                    check: check.clone(),
                    transport: *transport,
                    task,
                    health,
                    since,
                },
            );
        }
        released
    }

    /// Feeds one probe outcome to its backend's state machine.
    pub fn record(&mut self, result: ProbeResult) -> Option<Transition> {
        let prober = self.probers.get_mut(&result.target)?;
        if prober.id != result.prober {
            return None;
        }
        let (fall, rise) = (prober.check.fall, prober.check.rise);
        let up = prober.health.record(&result.outcome, fall, rise)?;
        let was = human(prober.since.elapsed());
        prober.since = Instant::now();
        let (service, backend) = result.target;
        let detail = match &result.outcome {
            Ok(rtt) => format!(
                "after {rise} good probe(s) in a row (last round trip {:.1} ms); was down for {was}",
                rtt.as_secs_f64() * 1000.0
            ),
            Err(err) => {
                format!("after {fall} failed probe(s) in a row (last: {err}); was up for {was}")
            }
        };
        Some(Transition {
            service,
            backend,
            up,
            detail,
        })
    }

    /// What the probes say of `backend` in `service`; None when it is not probed.
    pub fn stats(&self, service: &str, backend: SocketAddr) -> Option<HealthStats> {
        self.probers
            .get(&(service.to_owned(), backend))
            .map(|p| p.health.stats())
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        for prober in self.probers.values() {
            prober.task.abort();
        }
    }
}

/// Probes `target` every `interval` until aborted or the run loop is gone.
async fn probe_loop(
    target: Target,
    id: u64,
    probe: Probe,
    interval: Duration,
    results: mpsc::Sender<ProbeResult>,
) {
    let mut tick = tokio::time::interval(interval);
    // A late probe (a busy loop, a long timeout) does not cause a burst after it.
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let outcome = probe::probe(target.1, &probe).await;
        let result = ProbeResult {
            target: target.clone(),
            prober: id,
            outcome,
        };
        if results.send(result).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr as _;

    use super::*;
    use crate::config::ProbeQuery;

    fn ok() -> Result<Duration, ProbeError> {
        Ok(Duration::from_millis(1))
    }

    fn fail() -> Result<Duration, ProbeError> {
        Err(ProbeError::Timeout(Duration::from_millis(500)))
    }

    /// Feeds `outcomes` (`+` good, `-` failed) and returns the state after each.
    fn run(health: &mut Health, outcomes: &str, fall: u32, rise: u32) -> String {
        outcomes
            .chars()
            .map(|c| {
                let outcome = if c == '+' { ok() } else { fail() };
                match health.record(&outcome, fall, rise) {
                    Some(true) => 'U',
                    Some(false) => 'D',
                    None if health.is_up() => 'u',
                    None => 'd',
                }
            })
            .collect()
    }

    #[test]
    fn falls_after_fall_failures_in_a_row() {
        let mut h = Health::default();
        assert!(h.is_up());
        // Two failures then a success reset the count; three in a row take it down.
        assert_eq!(run(&mut h, "--+--+---", 3, 2), "uuuuuuuuD");
        assert_eq!(h.stats().transitions, 1);
        assert_eq!((h.stats().probes_ok, h.stats().probes_failed), (2, 7));
        assert_eq!(h.stats().state, "down");
        assert_eq!(
            h.stats().last_error.as_deref(),
            Some("no reply within 500ms")
        );
    }

    #[test]
    fn rises_after_rise_successes_in_a_row() {
        let mut h = Health::default();
        run(&mut h, "---", 3, 2);
        assert!(!h.is_up());
        // One success then a failure resets; two in a row bring it back.
        assert_eq!(run(&mut h, "+-++", 3, 2), "dddU");
        assert_eq!(h.stats().transitions, 2);
        assert_eq!(h.stats().state, "up");
        assert_eq!(h.stats().last_rtt_us, Some(1000));
        assert_eq!(h.stats().last_error, None);
        // Up again: failures count from zero.
        assert_eq!(run(&mut h, "--+---", 3, 2), "uuuuuD");
    }

    #[test]
    fn fall_and_rise_of_one_flip_on_every_change() {
        let mut h = Health::default();
        assert_eq!(run(&mut h, "+-+--++", 1, 1), "uDUDdUu");
        assert_eq!(h.stats().transitions, 4);
    }

    #[test]
    fn successes_while_up_and_failures_while_down_change_nothing() {
        let mut h = Health::default();
        assert_eq!(run(&mut h, "++++++", 2, 2), "uuuuuu");
        assert_eq!(run(&mut h, "--", 2, 2), "uD");
        assert_eq!(run(&mut h, "----", 2, 2), "dddd");
        assert_eq!(h.stats().transitions, 1);
    }

    fn check(fall: u32, rise: u32) -> HealthCheck {
        HealthCheck {
            query: ProbeQuery::from_str("health.example. A").unwrap(),
            interval: Duration::from_secs(3600),
            timeout: Duration::from_millis(10),
            fall,
            rise,
            expect_rcode: None,
        }
    }

    fn target(port: u16) -> Target {
        (
            "dns".to_owned(),
            SocketAddr::new([127, 0, 0, 1].into(), port),
        )
    }

    #[tokio::test]
    async fn monitor_applies_results_of_current_probers_only() {
        let (mut monitor, _rx) = Monitor::new();
        let wanted = BTreeMap::from([(target(1), (check(2, 1), Transport::Udp))]);
        assert!(monitor.reconcile(&wanted).is_empty());
        let id = monitor.probers[&target(1)].id;
        let result = |prober, outcome| ProbeResult {
            target: target(1),
            prober,
            outcome,
        };
        assert_eq!(monitor.record(result(id, fail())), None);
        // A stale prober's result is ignored.
        assert_eq!(monitor.record(result(id + 7, fail())), None);
        let t = monitor
            .record(result(id, fail()))
            .expect("down after two failures");
        assert_eq!(
            (t.service.as_str(), t.backend, t.up),
            ("dns", target(1).1, false)
        );
        assert!(
            t.detail
                .starts_with("after 2 failed probe(s) in a row (last: no reply within 500ms)"),
            "{}",
            t.detail
        );
        assert_eq!(monitor.stats("dns", target(1).1).unwrap().state, "down");

        // A changed check restarts the prober and keeps the state.
        let wanted = BTreeMap::from([(target(1), (check(2, 3), Transport::Udp))]);
        assert!(monitor.reconcile(&wanted).is_empty());
        let new_id = monitor.probers[&target(1)].id;
        assert_ne!(new_id, id);
        assert_eq!(
            monitor.record(result(id, ok())),
            None,
            "the old prober's result"
        );
        assert_eq!(monitor.stats("dns", target(1).1).unwrap().probes_ok, 0);
        assert_eq!(monitor.record(result(new_id, ok())), None);
        assert_eq!(monitor.record(result(new_id, ok())), None);
        let t = monitor
            .record(result(new_id, ok()))
            .expect("up after three");
        assert!(t.up);

        // Stopping a down backend's prober releases it; an up one is not listed.
        monitor.record(result(new_id, fail()));
        monitor.record(result(new_id, fail()));
        assert_eq!(monitor.stats("dns", target(1).1).unwrap().state, "down");
        let wanted = BTreeMap::from([(target(2), (check(2, 1), Transport::Udp))]);
        assert_eq!(monitor.reconcile(&wanted), vec![target(1)]);
        assert_eq!(monitor.stats("dns", target(1).1), None);
        assert!(monitor.reconcile(&BTreeMap::new()).is_empty());
    }

    #[tokio::test]
    async fn probers_report_to_the_run_loop() {
        // Nothing listens on the port: every probe is refused at once.
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = socket.local_addr().unwrap().port();
        drop(socket);
        let (mut monitor, mut rx) = Monitor::new();
        let mut fast = check(1, 1);
        fast.interval = Duration::from_millis(20);
        monitor.reconcile(&BTreeMap::from([(target(port), (fast, Transport::Udp))]));
        let result = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("a probe result within 5 s")
            .expect("the channel is open");
        assert!(
            matches!(result.outcome, Err(ProbeError::Refused)),
            "{:?}",
            result.outcome
        );
        let t = monitor.record(result).expect("fall = 1");
        assert!(!t.up);
    }
}

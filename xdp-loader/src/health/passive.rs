//! Passive health: a backend ejected for what its answers show, before an
//! active probe would notice (dnsdist's "lazy" health checks), and readmitted
//! after `eject_for`.
//!
//! The kernel counts every backend's answers by RCODE and the loader its
//! queries that timed out; the daemon reads those cumulative counts once a
//! second and hands them to a [`Tracker`] per backend, which keeps the samples
//! of the last `window` and judges the differences: over `min_queries`
//! resolved queries (answered or timed out), a timeout share or a SERVFAIL
//! share (of the answers) above its maximum ejects the backend.

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

use crate::config::PassiveCheck;

/// How often the daemon reads the counters (`daemon::sources::ticks`).
pub const TICK: Duration = Duration::from_secs(1);

/// A backend's cumulative counts, as the kernel and the expiry thread keep them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub answers: u64,
    pub servfail: u64,
    pub timeouts: u64,
}

/// A change of a backend's passive verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transition {
    /// Out of selection; why, with the numbers.
    Eject(String),
    /// Back in selection after `eject_for`; how long it was out.
    Readmit(Duration),
}

/// One backend's recent counts and whether it is ejected.
#[derive(Debug, Default)]
pub struct Tracker {
    /// Samples, oldest first; the first is the window's base.
    samples: VecDeque<(Instant, Counts)>,
    /// When it was ejected, and until when.
    ejected: Option<(Instant, Instant)>,
    /// Ejections since the backend joined.
    pub ejections: u64,
}

impl Tracker {
    /// Whether the backend is out of selection for its answers.
    pub fn ejected(&self) -> bool {
        self.ejected.is_some()
    }

    /// Takes the counts read at `now`; says when the verdict changes.
    pub fn observe(
        &mut self,
        now: Instant,
        counts: Counts,
        check: &PassiveCheck,
    ) -> Option<Transition> {
        if let Some((since, until)) = self.ejected {
            // Judged once a second: the tick nearest the end readmits it, so
            // an ejection lasts `eject_for` give or take half a tick, not up
            // to a tick more.
            if now + TICK / 2 < until {
                return None;
            }
            // A fresh window: what it did before its ejection is judged.
            self.ejected = None;
            self.samples.clear();
            self.samples.push_back((now, counts));
            return Some(Transition::Readmit(now.duration_since(since)));
        }
        // Counters that went back (a slot reused by another backend) restart the window.
        if let Some((_, last)) = self.samples.back()
            && (counts.answers < last.answers
                || counts.servfail < last.servfail
                || counts.timeouts < last.timeouts)
        {
            self.samples.clear();
        }
        self.samples.push_back((now, counts));
        // Keep one sample at or before the window's start as its base.
        while self.samples.len() > 1 && now.duration_since(self.samples[1].0) >= check.window {
            self.samples.pop_front();
        }
        let (since, base) = *self.samples.front()?;
        let answers = counts.answers - base.answers;
        let servfail = counts.servfail - base.servfail;
        let timeouts = counts.timeouts - base.timeouts;
        let resolved = answers + timeouts;
        if resolved < check.min_queries || resolved == 0 {
            return None;
        }
        let over = |n: u64, of: u64, max: Option<f64>| {
            max.filter(|&max| of > 0 && n as f64 / of as f64 > max)
        };
        let seconds = now.duration_since(since).as_secs_f64();
        let why = if let Some(max) = over(timeouts, resolved, check.max_timeout_ratio) {
            format!(
                "{timeouts} of {resolved} queries timed out in {seconds:.1}s ({:.0}%, max_timeout_ratio {max})",
                100.0 * timeouts as f64 / resolved as f64
            )
        } else if let Some(max) = over(servfail, answers, check.max_servfail_ratio) {
            format!(
                "{servfail} of {answers} answers were SERVFAIL in {seconds:.1}s ({:.0}%, max_servfail_ratio {max})",
                100.0 * servfail as f64 / answers as f64
            )
        } else {
            return None;
        };
        self.ejected = Some((now, now + check.eject_for));
        self.ejections += 1;
        Some(Transition::Eject(why))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check() -> PassiveCheck {
        PassiveCheck {
            max_timeout_ratio: Some(0.2),
            max_servfail_ratio: Some(0.5),
            window: Duration::from_secs(5),
            min_queries: 50,
            eject_for: Duration::from_secs(10),
        }
    }

    fn counts(answers: u64, servfail: u64, timeouts: u64) -> Counts {
        Counts {
            answers,
            servfail,
            timeouts,
        }
    }

    #[test]
    fn servfail_share_over_the_maximum_ejects_then_readmits() {
        let (t0, check) = (Instant::now(), check());
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut t = Tracker::default();
        assert_eq!(t.observe(at(0), counts(0, 0, 0), &check), None);
        // 40 answers, all SERVFAIL: under min_queries.
        assert_eq!(t.observe(at(1), counts(40, 40, 0), &check), None);
        let Some(Transition::Eject(why)) = t.observe(at(2), counts(80, 60, 0), &check) else {
            panic!("60 of 80 SERVFAIL ejects");
        };
        assert!(why.contains("60 of 80 answers were SERVFAIL"), "{why}");
        assert!(t.ejected());
        assert_eq!(
            t.observe(at(11), counts(80, 60, 0), &check),
            None,
            "ejected for 10s"
        );
        // The tick nearest the end: 10 s less a few milliseconds readmits.
        let nearly = at(12) - Duration::from_millis(20);
        assert_eq!(
            t.observe(nearly, counts(80, 60, 0), &check),
            Some(Transition::Readmit(nearly - at(2)))
        );
        assert_eq!(t.observe(at(12), counts(80, 60, 0), &check), None);
        // Judged afresh: the old SERVFAILs are not counted again.
        assert_eq!(t.observe(at(13), counts(130, 60, 0), &check), None);
        assert_eq!(t.ejections, 1);
    }

    #[test]
    fn timeouts_and_the_window() {
        let (t0, check) = (Instant::now(), check());
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut t = Tracker::default();
        // 10% timeouts for a long while: fine.
        for s in 0..10 {
            assert_eq!(t.observe(at(s), counts(90 * s, 0, 10 * s), &check), None);
        }
        // Then a burst of timeouts: 5 s of 50% is over 20%.
        let mut ejected = None;
        for s in 10..16 {
            let extra = s - 9;
            if let Some(tr) = t.observe(at(s), counts(810 + 50 * extra, 0, 90 + 50 * extra), &check)
            {
                ejected = Some((s, tr));
                break;
            }
        }
        let (s, Transition::Eject(why)) = ejected.expect("a timeout burst ejects") else {
            panic!()
        };
        assert!(s <= 12, "ejected within the window, at {s}s: {why}");
        assert!(why.contains("timed out"), "{why}");
    }

    #[test]
    fn counters_going_back_restart_the_window() {
        let (t0, check) = (Instant::now(), check());
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut t = Tracker::default();
        t.observe(at(0), counts(1000, 0, 0), &check);
        // The slot now holds a new backend: no ejection from a negative difference.
        assert_eq!(t.observe(at(1), counts(10, 10, 0), &check), None);
        assert_eq!(t.observe(at(2), counts(40, 40, 0), &check), None);
    }
}

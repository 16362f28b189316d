//! What `/healthz` and `/readyz` answer: flags the run loop sets and the
//! metrics listener only reads, so a probe never waits behind a change.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

/// Whether this node's data path steers as configured: attached with its maps
/// filled, and every Kubernetes source has delivered its first set.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<Flags>);

#[derive(Debug, Default)]
struct Flags {
    attached: AtomicBool,
    synced: AtomicBool,
}

impl Readiness {
    /// The data path is attached (or adopted) and its maps are filled.
    pub fn set_attached(&self) {
        self.0.attached.store(true, Ordering::Release);
    }

    /// Every service fed by Kubernetes has had its first set (true when none is).
    pub fn set_synced(&self, synced: bool) {
        self.0.synced.store(synced, Ordering::Release);
    }

    /// None when ready, else what it still waits for.
    pub fn waiting_for(&self) -> Option<&'static str> {
        match (
            self.0.attached.load(Ordering::Acquire),
            self.0.synced.load(Ordering::Acquire),
        ) {
            (true, true) => None,
            (false, _) => Some("the data path is not attached and filled yet"),
            (true, false) => Some(
                "a service fed by Kubernetes has not had its first EndpointSlice list yet (see `dnsteer stats`)",
            ),
        }
    }
}

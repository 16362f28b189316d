//! The watch task: kube-rs's watcher (list, then watch from the list's
//! resourceVersion; relist after `410 Gone`) with backoff, turned into
//! whole desired sets.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    time::{Duration, SystemTime},
};

use futures::{Stream, StreamExt as _, stream};
use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use kube::{
    Api, Client, ResourceExt as _,
    runtime::{
        utils,
        watcher::{self, Event},
    },
};
use log::{debug, info, warn};
use tokio::sync::mpsc;

use super::{
    BackendSet, EndpointState, SERVICE_NAME_LABEL, ServiceAddrs, Spec, Status, Update,
    WATCH_TIMEOUT, slices,
};

/// Exponential backoff between failed lists or watches: 250 ms doubling to
/// 5 s, with up to a quarter of jitter; back to the start after a success.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Backoff {
    pub const MIN: Duration = Duration::from_millis(250);
    pub const MAX: Duration = Duration::from_secs(5);
}

impl Default for Backoff {
    fn default() -> Self {
        Self { next: Self::MIN }
    }
}

impl Iterator for Backoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let delay = self.next;
        self.next = (delay * 2).min(Self::MAX);
        // Enough jitter to keep many nodes from reconnecting in step.
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos();
        let quarter = delay.as_nanos() as u64 / 4;
        let jitter = if quarter == 0 {
            0
        } else {
            u64::from(nanos) % quarter
        };
        Some(delay + Duration::from_nanos(jitter))
    }
}

impl utils::Backoff for Backoff {
    fn reset(&mut self) {
        self.next = Self::MIN;
    }
}

/// `err` with its causes (kube's `client error (Connect)` alone does not say
/// that a certificate failed to verify), and what to check when the API
/// server's certificate is the cause.
fn explain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let line = cause.to_string();
        if !text.contains(&line) {
            text = format!("{text}: {line}");
        }
        source = cause.source();
    }
    if text.contains("certificate") {
        text.push_str(
            " (the API server's certificate does not verify against the CA dnsteer trusts: in a pod the service account's ca.crt, /var/run/secrets/kubernetes.io/serviceaccount/ca.crt; else the kubeconfig's certificate-authority)",
        );
    }
    text
}

/// Whether a watcher error is `410 Gone`, after which kube's watcher relists.
fn is_gone(err: &watcher::Error) -> bool {
    matches!(err, watcher::Error::WatchError(status) if status.code == 410)
}

/// Waits a [`Backoff`] after each failure before polling the watcher again,
/// except after `410 Gone`: the relist that follows is the recovery and
/// should not wait (kube's `StreamBackoff` would).
fn with_backoff<K: Send + 'static>(
    watcher: impl Stream<Item = Result<Event<K>, watcher::Error>> + Send + 'static,
) -> impl Stream<Item = Result<Event<K>, watcher::Error>> + Send {
    let state = (watcher.boxed(), Backoff::default(), None::<Duration>);
    stream::unfold(state, |(mut watcher, mut backoff, delay)| async move {
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        let item = watcher.next().await?;
        let delay = match &item {
            Ok(_) => {
                utils::Backoff::reset(&mut backoff);
                None
            }
            Err(err) if is_gone(err) => None,
            Err(_) => backoff.next(),
        };
        Some((item, (watcher, backoff, delay)))
    })
}

#[expect(
    clippy::large_enum_variant,
    reason = "one item at a time, moved once from the stream to the tracker"
)]
enum Item {
    Slice(Result<Event<EndpointSlice>, watcher::Error>),
    Service(Result<Event<Service>, watcher::Error>),
}

/// Watches `spec`'s EndpointSlices (and with `want_listen` its Service) for
/// dnsteer service `name` and sends [`Update`]s to `tx` until `tx` closes.
///
/// A backend set is sent once a complete list arrived, and again whenever
/// it changes; nothing is sent because a list or watch failed (the last set
/// stays). Each change of the watch's state (failing, back) is logged once.
pub async fn watch(
    client: Client,
    name: String,
    spec: Spec,
    want_listen: bool,
    tx: mpsc::UnboundedSender<Update>,
) {
    let slice_config = watcher::Config::default()
        .labels(&format!("{SERVICE_NAME_LABEL}={}", spec.service))
        .timeout(WATCH_TIMEOUT.as_secs() as u32);
    let slice_api: Api<EndpointSlice> = Api::namespaced(client.clone(), &spec.namespace);
    let slices = with_backoff(watcher::watcher(slice_api, slice_config))
        .map(Item::Slice)
        .boxed();
    let services = if want_listen {
        let config = watcher::Config::default()
            .fields(&format!("metadata.name={}", spec.service))
            .timeout(WATCH_TIMEOUT.as_secs() as u32);
        let api: Api<Service> = Api::namespaced(client, &spec.namespace);
        with_backoff(watcher::watcher(api, config))
            .map(Item::Service)
            .boxed()
    } else {
        stream::pending().boxed()
    };
    let mut items = stream::select(slices, services);
    let mut tracker = Tracker::new(name, spec);
    while let Some(item) = items.next().await {
        for update in tracker.on(item) {
            if tx.send(update).is_err() {
                return;
            }
        }
    }
}

/// One service's view of the API server.
struct Tracker {
    name: String,
    spec: Spec,
    slices: BTreeMap<String, EndpointSlice>,
    /// Slices of a list in progress (between `Init` and `InitDone`).
    listing: Option<BTreeMap<String, EndpointSlice>>,
    /// A complete list has arrived: the set is worth sending.
    listed: bool,
    sent: Option<BackendSet>,
    service: Option<Service>,
    service_listing: Option<Option<Service>>,
    listen_sent: Option<ServiceAddrs>,
    /// The last item of each watch (slices, Service) was an error.
    failing: [bool; 2],
    status: Status,
}

impl Tracker {
    fn new(name: String, spec: Spec) -> Self {
        Self {
            name,
            spec,
            slices: BTreeMap::new(),
            listing: None,
            listed: false,
            sent: None,
            service: None,
            service_listing: None,
            listen_sent: None,
            failing: [false; 2],
            status: Status::default(),
        }
    }

    fn on(&mut self, item: Item) -> Vec<Update> {
        let mut out = Vec::new();
        let before = self.status.clone();
        let (stream, result) = match item {
            Item::Slice(Ok(event)) => {
                self.on_slice(event, &mut out);
                (0, Ok(()))
            }
            Item::Service(Ok(event)) => {
                self.on_service(event, &mut out);
                (1, Ok(()))
            }
            Item::Slice(Err(err)) => (0, Err(err)),
            Item::Service(Err(err)) => (1, Err(err)),
        };
        match result {
            Ok(()) => {
                self.failing[stream] = false;
                self.status.last_sync = Some(SystemTime::now());
            }
            Err(err) if is_gone(&err) => {
                self.status.watch_errors += 1;
                // Not a failure of the connection: kube's watcher relists next.
                info!(
                    "service {}: {}: resource version expired (410 Gone), relisting",
                    self.name, self.spec
                );
            }
            Err(err) => {
                self.status.watch_errors += 1;
                let err = explain(&err);
                if !self.failing.iter().any(|f| *f) && self.status.last_error.is_none() {
                    let kept = match &self.sent {
                        Some(sent) => format!("the last {} backend(s)", sent.len()),
                        // Nothing listed yet: an adopted data path keeps its own.
                        None => "the backends the data path has".to_owned(),
                    };
                    warn!(
                        "service {}: watching {} failed: {err}; keeping {kept}, retrying with backoff",
                        self.name, self.spec
                    );
                } else {
                    debug!("service {}: watching {}: {err}", self.name, self.spec);
                }
                self.failing[stream] = true;
                self.status.last_error = Some(err);
            }
        }
        // Connected: a complete list is in and no watch is failing.
        let connected = self.listed && !self.failing.iter().any(|f| *f);
        if connected && !self.status.connected {
            let (active, draining) = counts(self.sent.as_deref().unwrap_or_default());
            if self.status.watch_errors == 0 {
                info!(
                    "service {}: {} synced: {active} active, {draining} draining",
                    self.name, self.spec
                );
            } else {
                info!(
                    "service {}: watch of {} restored ({} error(s) so far): {active} active, {draining} draining",
                    self.name, self.spec, self.status.watch_errors
                );
            }
            self.status.last_error = None;
        }
        self.status.connected = connected;
        if self.status != before {
            out.push(Update::Status {
                service: self.name.clone(),
                status: self.status.clone(),
            });
        }
        out
    }

    fn on_slice(&mut self, event: Event<EndpointSlice>, out: &mut Vec<Update>) {
        match event {
            Event::Init => self.listing = Some(BTreeMap::new()),
            Event::InitApply(slice) => {
                self.listing
                    .get_or_insert_default()
                    .insert(slice.name_any(), slice);
            }
            Event::InitDone => {
                // The list replaces what we had at once: a slice that went
                // away while we were not watching is gone now.
                self.slices = self.listing.take().unwrap_or_default();
                self.listed = true;
            }
            Event::Apply(slice) => {
                self.slices.insert(slice.name_any(), slice);
            }
            Event::Delete(slice) => {
                self.slices.remove(&slice.name_any());
            }
        }
        if self.listing.is_some() || !self.listed {
            return;
        }
        self.status.endpoints_seen = slices::endpoints_seen(self.slices.values()) as u64;
        let set = slices::backends(self.slices.values(), &self.spec);
        if self.sent.as_ref() != Some(&set) {
            debug!(
                "service {}: {} now has {} backend(s)",
                self.name,
                self.spec,
                set.len()
            );
            self.sent = Some(set.clone());
            out.push(Update::Backends {
                service: self.name.clone(),
                backends: set,
            });
        }
    }

    fn on_service(&mut self, event: Event<Service>, out: &mut Vec<Update>) {
        match event {
            Event::Init => self.service_listing = Some(None),
            Event::InitApply(service) => self.service_listing = Some(Some(service)),
            Event::InitDone => self.service = self.service_listing.take().flatten(),
            Event::Apply(service) => self.service = Some(service),
            Event::Delete(_) => self.service = None,
        }
        if self.service_listing.is_some() {
            return;
        }
        let addrs = self
            .service
            .as_ref()
            .map(|s| slices::service_addrs(s, &self.spec))
            .unwrap_or_default();
        if self.listen_sent.as_ref() != Some(&addrs) {
            self.listen_sent = Some(addrs.clone());
            out.push(Update::Listen {
                service: self.name.clone(),
                cluster: addrs.cluster,
                listen: addrs.outside,
            });
        }
    }
}

/// (active, draining) in a set.
pub fn counts(set: &[(SocketAddr, EndpointState)]) -> (usize, usize) {
    let active = set
        .iter()
        .filter(|(_, s)| *s == EndpointState::Active)
        .count();
    (active, set.len() - active)
}

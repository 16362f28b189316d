//! A source of backends: the EndpointSlices (and, for `listen`, the Service)
//! of a Kubernetes Service, watched with kube-rs.
//!
//! Like the config file and the control socket, this module only says what
//! it wants: one task per service watches the API server and sends
//! [`Update`]s (the desired backend set, the listen addresses, its own
//! status) down a channel; the reconciler applies them. It never touches
//! the maps.

mod feed;
mod slices;
mod watch;

use std::{
    fmt,
    net::SocketAddr,
    path::Path,
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, Result};
pub use feed::{Current, Feed, Others};
pub use slices::{
    BackendSet, ServiceAddrs, backends, endpoints_seen, port_of, service_addrs, state_of,
};
pub use watch::{Backoff, watch};

pub use crate::config::PortRef;
use crate::config::{Family, Protocol};

/// The label EndpointSlice controllers put on every slice of a Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Which Service's endpoints feed one dnsteer service, and which of them.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Spec {
    pub namespace: String,
    /// The Kubernetes Service's name.
    pub service: String,
    pub port: PortRef,
    /// Endpoints of the other family are left out.
    pub family: Family,
    /// Endpoints whose port has another protocol are left out.
    pub protocol: Protocol,
}

impl fmt::Display for Spec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Kubernetes Service {}/{} port {}",
            self.namespace, self.service, self.port
        )
    }
}

/// What Kubernetes makes of one endpoint. Ordered: active outranks draining.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EndpointState {
    /// Serving but not ready, or terminating: keeps its flows, takes no new ones.
    Draining,
    /// Ready: takes new flows.
    Active,
}

/// How one service's watch stands, for `stats` and `/metrics`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Status {
    /// The last list or watch succeeded (the set is current).
    pub connected: bool,
    /// When the API server last told us something (a list or an event).
    pub last_sync: Option<SystemTime>,
    /// List and watch failures since the start.
    pub watch_errors: u64,
    /// Endpoints in the service's slices, whatever their state.
    pub endpoints_seen: u64,
    /// The last error, while disconnected.
    pub last_error: Option<String>,
}

/// What a watch task sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Update {
    /// The backends the service should have now: the whole set, replacing
    /// the last one. Never sent because a watch failed: a broken watch keeps
    /// the last set.
    Backends {
        service: String,
        backends: BackendSet,
    },
    /// The Service's addresses (only when asked for, see [`watch`]): its
    /// ClusterIPs, and its external and load-balancer addresses before any
    /// filtering by the interface.
    Listen {
        service: String,
        cluster: Vec<SocketAddr>,
        listen: Vec<SocketAddr>,
    },
    Status {
        service: String,
        status: Status,
    },
}

/// A client for the cluster: from `kubeconfig` when given, otherwise as
/// kubectl finds one (`KUBECONFIG`, `~/.kube/config`, then the in-cluster
/// service account).
pub async fn client(kubeconfig: Option<&Path>) -> Result<kube::Client> {
    let config = match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading the kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("using the kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer().await.context(
            "finding the Kubernetes API server: no --kubeconfig, KUBECONFIG, ~/.kube/config or in-cluster service account worked",
        )?,
    };
    kube::Client::try_from(config).context("making a Kubernetes API client")
}

/// How long a watch request asks the API server to keep it open; the watcher
/// gives up on a silent one a little after that and reconnects.
pub const WATCH_TIMEOUT: Duration = Duration::from_secs(60);

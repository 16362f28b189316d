//! `dnsteer run`: validate, load, fill, attach, pin; take changes from the
//! sources (config file edits and SIGHUP, the control socket, health probes);
//! serve metrics and health; on SIGINT/SIGTERM undo it all.
//!
//! The loop here is the only place that changes the running state: it takes
//! one [`sources::Event`] at a time and runs it on the daemon's state in tokio's
//! blocking pool, since map writes and RCU grace periods (`membarrier`) block,
//! and probes, control clients and scrapes must not wait on them.

pub mod sources;
mod state;
pub mod view;

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use anyhow::{Context as _, Result};
use log::{error, info, warn};
use tokio::{
    net::{TcpListener, UnixListener},
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};

use self::{
    sources::{Event, QUEUE},
    state::{Daemon, describe},
    view::Published,
};
use crate::{
    config::{self, Config, XdpModeSetting},
    control::{self, Op, server::Pending},
    datapath::{self, Datapath, caps},
    health::Monitor,
    kubernetes::{Feed, Others},
    observe::{
        metrics::{self, Scrape},
        ready::Readiness,
    },
};

/// What `dnsteer run` was asked to do.
#[derive(Debug)]
pub struct RunOptions {
    pub config: PathBuf,
    /// Overrides the config's `interface` (which may then be left out).
    pub iface: Option<String>,
    /// Overrides the config's `xdp_mode`.
    pub xdp_mode: Option<XdpModeSetting>,
    /// Where to serve Prometheus metrics on `/metrics`.
    pub metrics_listen: Option<SocketAddr>,
    /// Keep the data path when exiting, and adopt one left running (or
    /// `persist = true` in the config).
    pub persist: bool,
    /// The cluster of services with `kubernetes = { ... }`.
    pub kubeconfig: Option<PathBuf>,
    /// Overrides the config's `[sockets] cgroup`.
    pub cgroup: Option<config::SocketCgroup>,
}

impl RunOptions {
    /// Reads and validates the config, with the command line's overrides,
    /// and chooses this node's interface for `interface = "auto"`.
    pub(crate) fn load(&self) -> Result<Config> {
        let mut config = config::load_with(&self.config, self.iface.as_deref())?;
        if config.interface == config::AUTO_INTERFACE {
            let (iface, why) = datapath::uplink::choose(&config)
                .with_context(|| format!("{}: interface = \"auto\"", self.config.display()))?;
            info!("interface = \"auto\": steering on {iface}: {why}");
            config.interface = iface;
        }
        if let Some(mode) = self.xdp_mode {
            config.xdp_mode = mode;
        }
        if let Some(cgroup) = &self.cgroup {
            config.sockets = cgroup.clone();
        }
        Ok(config)
    }
}

/// How long `dnsteer run` waits for the first lists of its Kubernetes-fed
/// services before it attaches.
const KUBERNETES_FIRST_SYNC: std::time::Duration = std::time::Duration::from_secs(5);

/// Stops a spawned task when dropped (the metrics server and the sources on shutdown).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs `job` on the daemon in the blocking pool, publishes what readers see
/// afterwards to `view` (before the caller answers anyone) and gives the
/// daemon back. A job that panics takes the daemon with it (its drop detaches
/// the data path) and `run` ends with an error.
async fn blocking<R: Send + 'static>(
    slot: &mut Option<Daemon>,
    view: &Published,
    job: impl FnOnce(&mut Daemon) -> R + Send + 'static,
) -> Result<R> {
    let mut daemon = slot
        .take()
        .context("the daemon was lost to an earlier failure")?;
    let view = view.clone();
    let (daemon, out) = tokio::task::spawn_blocking(move || {
        let serving = daemon.datapath.live().serving();
        let out = job(&mut daemon);
        daemon.datapath.close_sockets_of_left(&serving);
        view.set(daemon.view());
        (daemon, out)
    })
    .await
    .context("a change to the running state panicked; the data path is detached")?;
    *slot = Some(daemon);
    Ok(out)
}

/// Answers each scrape from the counters and the published `view`, in the
/// blocking pool (map reads block) and never through the loop.
async fn scrapes_from(view: Published, mut scrapes: mpsc::Receiver<Scrape>) {
    while let Some(reply) = scrapes.recv().await {
        let view = view.get();
        let body = tokio::task::spawn_blocking(move || {
            view.snapshot()
                .map(|s| metrics::encode(&s))
                .map_err(|err| format!("reading the counters: {err:#}"))
        })
        .await
        .unwrap_or_else(|err| Err(format!("reading the counters panicked: {err}")));
        let _ = reply.send(body);
    }
}

/// `dnsteer run`: runs until SIGINT or SIGTERM.
pub async fn run(opts: RunOptions) -> Result<()> {
    let config = opts.load()?;
    config::check_interface(&opts.config, &config.interface)?;
    caps::require_for_run()?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let sighup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    // Bound first: a second instance in this namespace stops here, before touching anything.
    let listener = control::bind(&config.interface)?;
    listener.set_nonblocking(true)?;
    let listener = UnixListener::from_std(listener).context("registering the control socket")?;
    let metrics_listener = match opts.metrics_listen {
        None => None,
        Some(addr) => Some(TcpListener::bind(addr).await.with_context(|| {
            format!("--metrics-listen {addr}: cannot listen there for metrics; pick a free address and port")
        })?),
    };

    // An observer: /metrics reads the pinned counters with the view the loop
    // publishes (scrapes never wait for a change); /healthz and /readyz answer from `ready` from the start, so a
    // startup probe sees the process while it waits for Kubernetes.
    let ready = Readiness::default();
    let (scrapes, scrape_requests) = mpsc::channel::<Scrape>(16);
    let _metrics = metrics_listener.map(|listener| {
        info!(
            "serving Prometheus metrics on http://{0}/metrics, liveness on /healthz, readiness on /readyz",
            listener
                .local_addr()
                .map_or_else(|_| "?".to_owned(), |a| a.to_string())
        );
        AbortOnDrop(tokio::spawn(metrics::serve(listener, scrapes, ready.clone())))
    });

    let (monitor, probe_results) = Monitor::new();
    let persist = opts.persist || config.persist;
    if let Some(path) = &opts.kubeconfig {
        std::fs::metadata(path)
            .with_context(|| format!("--kubeconfig {}: cannot read it", path.display()))?;
    }
    let (mut feed, mut kube_updates) = Feed::new(opts.kubeconfig.clone());
    feed.sync(&config);
    // The first packet should already see Kubernetes's backends: wait a
    // little for the first lists (an adopted data path keeps its own meanwhile).
    let deadline = tokio::time::Instant::now() + KUBERNETES_FIRST_SYNC;
    while !feed.synced() {
        match tokio::time::timeout_at(deadline, kube_updates.recv()).await {
            Ok(Some(update)) => {
                feed.on(update);
            }
            Ok(None) | Err(_) => {
                warn!(
                    "no backends from Kubernetes yet for {} after {}; starting with what the data path has, they apply as they come",
                    feed.unsynced().join(", "),
                    config::human(KUBERNETES_FIRST_SYNC)
                );
                break;
            }
        }
    }
    let daemon = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || {
            let datapath = Datapath::start_with(&config, persist, |live| {
                feed.desired(&config, |name| live.current(name), Others::AsConfigured)
            })?;
            Daemon::new(datapath, &config, monitor, feed)
        })
        .await
        .context("starting the data path panicked")??
    };
    describe(&config, &daemon);
    ready.set_attached();
    ready.set_synced(daemon.kubernetes_synced());
    info!(
        "running; stop with Ctrl-C or SIGTERM, reload with SIGHUP or by editing {}, change backends with `dnsteer backends --iface {}`, watch with `dnsteer stats --iface {}`",
        opts.config.display(),
        config.interface,
        config.interface
    );

    // What readers see, published before any reader can ask.
    let view = Published::default();
    view.set(daemon.view());

    // The sources, each a task feeding `inbox`; reads (`list`, scrapes) are
    // answered from `view` beside them and never wait for the loop.
    let (events, mut inbox) = mpsc::channel::<Event>(QUEUE);
    let (requests, pending) = mpsc::channel::<Pending>(16);
    let _sources = [
        tokio::spawn(control::server::accept(listener, requests, view.clone())),
        tokio::spawn(scrapes_from(view.clone(), scrape_requests)),
        tokio::spawn(sources::forward(
            pending,
            events.clone(),
            |(request, reply)| Event::Request(request, reply),
        )),
        tokio::spawn(sources::forward(
            probe_results,
            events.clone(),
            Event::Probe,
        )),
        tokio::spawn(sources::kubernetes(kube_updates, events.clone())),
        tokio::spawn(sources::config_file(
            opts.config.clone(),
            sighup,
            events.clone(),
        )),
        tokio::spawn(sources::ticks(events.clone())),
        tokio::spawn(sources::addresses(config.interface.clone(), events.clone())),
    ]
    .map(AbortOnDrop);
    drop(events);

    let opts = Arc::new(opts);
    let mut daemon = Some(daemon);
    let why = loop {
        tokio::select! {
            _ = sigint.recv() => break "SIGINT",
            _ = sigterm.recv() => break "SIGTERM",
            Some(event) = inbox.recv() => match event {
                Event::Request(request, reply) => {
                    let stop = request.op == Op::Stop;
                    let response = blocking(&mut daemon, &view, move |d| d.handle(&request)).await?;
                    let _ = reply.send(response);
                    if stop {
                        break "dnsteer stop";
                    }
                }
                Event::Reload(why) => {
                    let opts = opts.clone();
                    let synced = blocking(&mut daemon, &view, move |d| {
                        d.reload(&opts, why);
                        d.kubernetes_synced()
                    })
                    .await?;
                    ready.set_synced(synced);
                }
                Event::Change { service, change, source } => {
                    blocking(&mut daemon, &view, move |d| {
                        if let Err(err) = d.change(&service, &change, source) {
                            error!("{source}: service {service}: {err:#}");
                        }
                    })
                    .await?;
                }
                Event::Probe(result) => blocking(&mut daemon, &view, move |d| d.on_probe(result)).await?,
                Event::Kubernetes(update) => {
                    let synced = blocking(&mut daemon, &view, move |d| {
                        d.on_kubernetes(update);
                        d.kubernetes_synced()
                    })
                    .await?;
                    ready.set_synced(synced);
                }
                Event::Tick => blocking(&mut daemon, &view, Daemon::on_tick).await?,
                Event::Addresses => blocking(&mut daemon, &view, Daemon::on_addresses).await?,
            },
        }
    };
    let daemon = daemon.context("the daemon was lost to an earlier failure")?;
    if daemon.datapath.persistent() {
        info!(
            "{why}: exiting; the data path on {} keeps running (persist)",
            config.interface
        );
    } else {
        info!("{why}: detaching from {}", config.interface);
    }
    drop(daemon);
    info!("bye");
    Ok(())
}

//! `dnsteer run`: validate, load, fill, attach, pin; serve changes (control
//! socket, SIGHUP, config file edits), health probes and metrics; on
//! SIGINT/SIGTERM undo it all.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf,
    maps::MapInfo,
    programs::{
        SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        tc::{self, SchedClassifierLink, SchedClassifierLinkId},
        xdp::{XdpLink, XdpLinkId},
    },
    util::KernelVersion,
};
use log::{error, info, warn};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{TcpListener, UnixListener, UnixStream},
    signal::unix::{SignalKind, signal},
    sync::{mpsc, oneshot},
};
use xdp_common::ForwardConf;

use crate::{
    REPLY_IN_PROGRAM, TC_PROGRAM, XDP_PROGRAM, caps,
    config::{self, Config, Forward, Protocol, XdpModeSetting},
    control::{self, Op, Request, Response},
    expiry::Sweeper,
    health::{Monitor, ProbeResult},
    live::{BackendView, Live},
    maps::{self, KernelMaps},
    metrics::{self, Scrape},
    pins::{self, Pins},
    probe::Transport,
    route,
    stats::{self, Snapshot},
};

/// What `dnsteer run` was asked to do.
#[derive(Debug)]
pub struct RunOptions {
    pub config: PathBuf,
    /// Overrides the config's `interface`.
    pub iface: Option<String>,
    /// Overrides the config's `xdp_mode`.
    pub xdp_mode: Option<XdpModeSetting>,
    /// Where to serve Prometheus metrics on `/metrics`.
    pub metrics_listen: Option<SocketAddr>,
    /// Keep the data path when exiting, and adopt one left running (or
    /// `persist = true` in the config).
    pub persist: bool,
}

impl RunOptions {
    /// Reads and validates the config, with the command line's overrides.
    fn load(&self) -> Result<Config> {
        let mut config = config::load(&self.config)?;
        if let Some(iface) = &self.iface {
            config.interface = iface.clone();
        }
        if let Some(mode) = self.xdp_mode {
            config.xdp_mode = mode;
        }
        Ok(config)
    }
}

/// A loaded, attached and pinned instance. Dropping it detaches the programs
/// (the links are owned by the `Ebpf` inside `live`), then removes the pins and
/// releases the lock; a persistent instance leaves all three in place.
pub struct Instance {
    live: Live<KernelMaps>,
    /// A persistent instance's links, pinned beside the maps.
    _links: Vec<PinnedLink>,
    pins: Pins,
    pub xdp_mode: XdpModeSetting,
    /// The config the maps hold now (runtime changes aside).
    config: Config,
    monitor: Monitor,
    /// Services whose every weighted backend is down, as last logged.
    failing_open: BTreeSet<String>,
    /// Interfaces whose ingress runs the fast path's reply program.
    reply_ins: BTreeSet<String>,
    /// Removes the records of queries nobody answered.
    sweeper: Sweeper,
}

impl Instance {
    /// Brings up dnsteer on `config.interface`. Nothing stays attached or pinned
    /// when this fails: everything acquired so far is dropped on the way out.
    ///
    /// With `persist`, the maps and links are pinned and stay when it exits; a
    /// data path an earlier persistent instance left is adopted: its maps (and
    /// flows) are kept and brought in line with `config`, and the new programs
    /// are swapped into its links atomically. A failed adoption leaves the old
    /// data path attached and its pins in place.
    pub fn start(config: &Config, monitor: Monitor, persist: bool) -> Result<Self> {
        let iface = config.interface.as_str();
        let mut pins = Pins::claim(iface)?;
        if persist && pins.ephemeral {
            bail!(
                "--persist: the BPF filesystem for {} had to be mounted in this process's own mount namespace (as `ip netns exec` makes), so the pins would vanish with it; mount one where it outlives dnsteer (mount -t bpf bpf /sys/fs/bpf, or set DNSTEER_PIN_ROOT to a directory on one) and enter the network namespace with nsenter --net instead",
                pins.dir().display()
            );
        }
        let adopt = pins.persisted();
        if adopt && !persist {
            bail!(
                "a persistent dnsteer data path is attached to {iface} (pinned under {}); adopt it with `dnsteer run --persist`, or remove it with `dnsteer stop --iface {iface}`",
                pins.dir().display()
            );
        }
        if !adopt {
            if pins::attached(iface) {
                bail!(
                    "dnsteer is already running on {iface} (its programs are attached there); stop that instance first"
                );
            }
            pins.clear("left by an instance that did not exit cleanly")?;
        }
        let (limits, flows) = (&config.limits, config.flows.size);
        let ebpf = if adopt {
            // From here on a failure must leave the old data path as it is.
            pins.persist = true;
            check_layouts(pins.dir(), &maps::layouts(limits, flows))?;
            maps::load_pinned(limits, flows, Some(pins.dir()))?
        } else {
            maps::load_pinned(limits, flows, persist.then(|| pins.dir()))?
        };
        // Maps are filled before anything is attached: the first packet already
        // sees the whole configuration.
        let mut store = KernelMaps::new(ebpf);
        // Adopted maps are in use by the attached data path from the start.
        store.attached = adopt;
        let mut live = if adopt {
            Live::adopt(store, limits.services)
                .context("reading the state of the persistent data path")?
        } else {
            Live::new(store).with_max_services(limits.services)
        };
        let lines = live.apply(config)?;
        if adopt {
            info!(
                "adopted the data path pinned under {}: flows kept, {} change(s) to match {}",
                pins.dir().display(),
                lines.len(),
                config.interface
            );
            for line in lines {
                info!("adopt: {line}");
            }
        }
        let ebpf = &mut live.store_mut().ebpf;
        let mut links = Vec::new();
        // Replies are translated from before the first query is steered.
        let tc_pin = pins.dir().join(pins::LINK_TC);
        if adopt && tc_pin.exists() {
            load_tc(ebpf, TC_PROGRAM)?;
            swap_tc(ebpf, TC_PROGRAM, &tc_pin)?;
        } else {
            load_tc(ebpf, TC_PROGRAM)?;
            let tc: &mut SchedClassifier = program(ebpf, TC_PROGRAM)?;
            let id = attach_tc(tc, TC_PROGRAM, iface, TcAttachType::Egress)?;
            if persist {
                links.push(pin_tc_link(tc, id, &tc_pin)?);
            }
        }
        // The fast path's reply program: loaded when asked for, or when a
        // persistent one left links to swap it into.
        let reply_pins = if adopt {
            pins.reply_in_links()?
        } else {
            Vec::new()
        };
        let mut reply_ins = BTreeSet::new();
        if config.forward == Forward::Redirect || !reply_pins.is_empty() {
            let prog: &mut SchedClassifier = program(ebpf, REPLY_IN_PROGRAM)?;
            prog.load().with_context(|| {
                format!("loading {REPLY_IN_PROGRAM} (the verifier's log follows)")
            })?;
        }
        for (name, pin) in reply_pins {
            swap_tc(ebpf, REPLY_IN_PROGRAM, &pin)?;
            reply_ins.insert(name);
        }
        let client_ifindex = config::check_interface(Path::new("-"), iface)?;
        let mode = match config.forward {
            Forward::Stack => xdp_common::forward::STACK,
            Forward::Redirect => xdp_common::forward::REDIRECT,
        };
        maps::write_forward(
            ebpf,
            &ForwardConf {
                mode,
                client_ifindex,
            },
        )?;
        let xdp_pin = pins.dir().join(pins::LINK_XDP);
        let xdp_mode = if adopt && xdp_pin.exists() {
            swap_xdp(ebpf, &xdp_pin)?;
            config.xdp_mode
        } else {
            let (mode, id) = attach_xdp(ebpf, iface, config.xdp_mode)?;
            if persist {
                let xdp: &mut Xdp = program(ebpf, XDP_PROGRAM)?;
                let link = FdLink::try_from(xdp.take_link(id)?).context(
                    "--persist needs XDP links that can be pinned (bpf_link, Linux 5.9 or later)",
                )?;
                links.push(pin_link(link, &xdp_pin)?);
            }
            mode
        };
        if !persist {
            pins.pin_maps(ebpf)?;
        }
        pins.persist = persist;
        // From here on packets read the maps: changes wait out grace periods.
        live.store_mut().attached = true;
        let sweeper = Sweeper::start(&live.store_mut().ebpf, config.flows.query_timeout)?;
        let mut instance = Instance {
            live,
            _links: links,
            pins,
            xdp_mode,
            config: config.clone(),
            monitor,
            failing_open: BTreeSet::new(),
            reply_ins,
            sweeper,
        };
        instance.sync_fast_path()?;
        instance.sync_health();
        Ok(instance)
    }

    pub fn pin_dir(&self) -> &Path {
        self.pins.dir()
    }

    /// Applies a new config, or changes nothing and logs why.
    fn reload(&mut self, opts: &RunOptions, why: &str) {
        let new = match opts.load() {
            Ok(new) => new,
            Err(err) => {
                error!("reload ({why}) refused, nothing changed: {err}");
                return;
            }
        };
        let fixed = [
            (
                "interface",
                self.config.interface.clone(),
                new.interface.clone(),
            ),
            (
                "xdp_mode",
                self.config.xdp_mode.to_string(),
                new.xdp_mode.to_string(),
            ),
            (
                "flows.size",
                self.config.flows.size.to_string(),
                new.flows.size.to_string(),
            ),
            (
                "forward",
                self.config.forward.to_string(),
                new.forward.to_string(),
            ),
            (
                "persist",
                (opts.persist || self.config.persist).to_string(),
                (opts.persist || new.persist).to_string(),
            ),
            (
                "limits.services",
                self.config.limits.services.to_string(),
                new.limits.services.to_string(),
            ),
            (
                "limits.listeners",
                self.config.limits.listeners.to_string(),
                new.limits.listeners.to_string(),
            ),
        ];
        for (field, old, new) in fixed {
            if old != new {
                error!(
                    "reload ({why}) refused, nothing changed: {field} changed from {old} to {new}, which needs a restart of dnsteer"
                );
                return;
            }
        }
        match self.live.apply(&new) {
            Ok(lines) if lines.is_empty() => info!("reload ({why}): no changes"),
            Ok(lines) => {
                for line in lines {
                    info!("reload ({why}): {line}");
                }
            }
            Err(err) => error!("reload ({why}) failed part way: {err:#}"),
        }
        if new.flows.query_timeout != self.config.flows.query_timeout {
            info!(
                "reload ({why}): flows.query_timeout {} -> {}",
                config::human(self.config.flows.query_timeout),
                config::human(new.flows.query_timeout)
            );
            self.sweeper.set_timeout(new.flows.query_timeout);
        }
        self.config = new;
        if let Err(err) = self.sync_fast_path() {
            error!("reload ({why}): fast path: {err:#}");
        }
        self.sync_health();
    }

    /// With `forward = "redirect"`, runs the reply program on the ingress of
    /// every interface a backend is routed through (adding new ones as
    /// backends come; never removing any while running).
    fn sync_fast_path(&mut self) -> Result<()> {
        if self.config.forward != Forward::Redirect {
            return Ok(());
        }
        let mut wanted = BTreeSet::new();
        for name in self.live.names() {
            for backend in self.live.members(&name) {
                match route::interface_for(backend.ip())? {
                    Some(iface) => {
                        wanted.insert(iface);
                    }
                    None => warn!(
                        "service {name}: no route to backend {backend} in the main table; its replies take the stack"
                    ),
                }
            }
        }
        for iface in wanted.difference(&self.reply_ins.clone()) {
            let ebpf = &mut self.live.store_mut().ebpf;
            let prog: &mut SchedClassifier = program(ebpf, REPLY_IN_PROGRAM)?;
            let id = attach_tc(prog, REPLY_IN_PROGRAM, iface, TcAttachType::Ingress)?;
            if self.pins.persist {
                let pin = self.pins.dir().join(format!("{}{iface}", pins::LINK_TC_IN));
                self._links.push(pin_tc_link(prog, id, &pin)?);
            }
            info!(
                "fast path: replies arriving on {iface} are translated there and sent straight out {}",
                self.config.interface
            );
            self.reply_ins.insert(iface.clone());
        }
        Ok(())
    }

    /// Probes exactly the members of services with `[service.health]`; a
    /// backend that stops being probed while down goes back into selection.
    fn sync_health(&mut self) {
        let mut wanted = BTreeMap::new();
        for service in &self.config.services {
            let Some(check) = &service.health else {
                continue;
            };
            let transport = match service.protocol {
                Protocol::Tcp => Transport::Tcp,
                Protocol::Udp | Protocol::UdpTcp => Transport::Udp,
            };
            for backend in self.live.members(&service.name) {
                wanted.insert((service.name.clone(), backend), (check.clone(), transport));
            }
        }
        for (service, backend) in self.monitor.reconcile(&wanted) {
            // A service that is gone took its backends with it.
            if self.live.names().contains(&service) {
                self.set_health(&service, backend, true, Some("no longer health checked"));
            }
        }
        self.note_fail_open();
    }

    /// Applies one probe's outcome; a transition changes selection and is logged.
    fn on_probe(&mut self, result: ProbeResult) {
        let Some(t) = self.monitor.record(result) else {
            return;
        };
        let state = if t.up { "up" } else { "DOWN" };
        let line = format!(
            "service {}: backend {} is {state} {}",
            t.service, t.backend, t.detail
        );
        if t.up {
            info!("{line}");
        } else {
            warn!("{line}");
        }
        // The line above is the transition's one log line.
        self.set_health(&t.service, t.backend, t.up, None);
        self.note_fail_open();
    }

    /// Puts `backend` in or out of selection; logs the change with `why`, if given.
    fn set_health(&mut self, service: &str, backend: SocketAddr, up: bool, why: Option<&str>) {
        match self.live.set_health(service, backend, up) {
            Ok(Some(line)) => {
                if let Some(why) = why {
                    info!("{line} ({why})");
                }
            }
            Ok(None) => {}
            Err(err) => error!(
                "service {service}: marking {backend} {} failed: {err:#}",
                if up { "up" } else { "down" }
            ),
        }
    }

    /// Logs each service that starts or stops failing open.
    fn note_fail_open(&mut self) {
        let now: BTreeSet<String> = self
            .live
            .names()
            .into_iter()
            .filter(|name| self.live.fail_open(name))
            .collect();
        for name in now.difference(&self.failing_open) {
            error!(
                "service {name}: FAILING OPEN: every backend failed its health checks; steering new flows to all of them anyway"
            );
        }
        for name in self.failing_open.difference(&now) {
            if self.live.names().contains(name) {
                warn!(
                    "service {name}: no longer failing open: a backend passes its health checks again"
                );
            }
        }
        self.failing_open = now;
    }

    /// The backends of service `name` with their health, and whether it fails open.
    fn views(&self, name: &str) -> Result<(Vec<BackendView>, bool)> {
        let name = self.live.resolve_name(name)?;
        let mut backends = self.live.list(&name)?;
        for b in &mut backends {
            if let Ok(addr) = b.address.parse() {
                b.health = self.monitor.stats(&name, addr);
            }
        }
        Ok((backends, self.live.fail_open(&name)))
    }

    /// The counters, as `dnsteer stats --json` would print them.
    fn snapshot(&self) -> Result<Snapshot> {
        let found = pins::Instance::find(Some(&self.config.interface))?;
        let mut snapshot = stats::read(&found, false)?;
        for service in &mut snapshot.services {
            if let Ok((views, fail_open)) = self.views(&service.name) {
                stats::add_health(service, fail_open, &views);
            }
        }
        Ok(snapshot)
    }

    /// Answers one control request.
    fn handle(&mut self, request: &Request) -> Response {
        if request.op == Op::Stop {
            // The run loop exits after this answer; nothing is left behind.
            self.pins.persist = false;
            return Response {
                ok: true,
                error: None,
                message: Some(format!(
                    "dnsteer on {}: detaching and removing its pins",
                    self.config.interface
                )),
                service: String::new(),
                fail_open: false,
                backends: Vec::new(),
            };
        }
        let service = request.service.as_str();
        let change = match request.op.change() {
            Ok(change) => change,
            Err(err) => return Response::error(service, err),
        };
        let message = match &change {
            None => None,
            Some(change) => match self.live.change(service, change) {
                Ok((_, message)) => {
                    info!("{message} (dnsteer backends)");
                    if let Err(err) = self.sync_fast_path() {
                        error!("fast path: {err:#}");
                    }
                    self.sync_health();
                    Some(message)
                }
                Err(err) => return Response::error(service, format!("{err:#}")),
            },
        };
        match self.views(service) {
            Ok((backends, fail_open)) => Response {
                ok: true,
                error: None,
                message,
                service: self.live.resolve_name(service).unwrap_or_default(),
                fail_open,
                backends,
            },
            Err(err) => Response::error(service, format!("{err:#}")),
        }
    }
}

/// One of the object's programs, by name and type.
fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let prog = ebpf
        .program_mut(name)
        .with_context(|| format!("the eBPF object has no program {name}"))?;
    Ok(prog.try_into()?)
}

/// Refuses to adopt pinned maps laid out otherwise than this build and the
/// config want: a pinned map keeps its size ([flows] size, [limits]), and
/// another dnsteer version may have other key or value layouts. A map not
/// pinned yet (new in this version) is created.
fn check_layouts(dir: &Path, wanted: &[(&str, usize, usize, u32)]) -> Result<()> {
    for &(name, key, value, entries) in wanted {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        let info =
            MapInfo::from_pin(&path).with_context(|| format!("reading {}", path.display()))?;
        // Counters and settings have sizes of this build's own, not the config's.
        let sized_by_config = maps::capacities(&config::Limits::default(), 0)
            .iter()
            .any(|(sized, _)| *sized == name);
        if info.max_entries() != entries && !sized_by_config {
            bail!(
                "the persistent data path's map {name} holds {} entries, this dnsteer version uses {entries}: it was laid out by another version; `dnsteer stop` it and start afresh (its flows are lost)",
                info.max_entries()
            );
        }
        if info.max_entries() != entries {
            bail!(
                "the persistent data path's map {name} holds {} entries, this config asks for {entries}; keep [flows] size and [limits] as they were, or `dnsteer stop` it first (its flows are lost)",
                info.max_entries()
            );
        }
        if (info.key_size() as usize, info.value_size() as usize) != (key, value) {
            bail!(
                "the persistent data path's map {name} is laid out by another dnsteer version ({}-byte keys, {}-byte values; this one uses {key} and {value}); `dnsteer stop` it and start afresh (its flows are lost)",
                info.key_size(),
                info.value_size()
            );
        }
    }
    Ok(())
}

fn pin_link(link: FdLink, path: &Path) -> Result<PinnedLink> {
    link.pin(path)
        .with_context(|| format!("pinning a link at {}", path.display()))
}

fn load_tc(ebpf: &mut Ebpf, name: &str) -> Result<()> {
    let prog: &mut SchedClassifier = program(ebpf, name)?;
    prog.load()
        .with_context(|| format!("loading {name} (the verifier's log follows)"))?;
    Ok(())
}

/// Swaps the loaded TC program `name` into the link pinned at `pin`.
fn swap_tc(ebpf: &mut Ebpf, name: &str, pin: &Path) -> Result<()> {
    let prog: &mut SchedClassifier = program(ebpf, name)?;
    let link = PinnedLink::from_pin(pin)
        .with_context(|| format!("opening the pinned link {}", pin.display()))?;
    let link = SchedClassifierLink::try_from(FdLink::from(link))
        .with_context(|| format!("{} is not a TC link", pin.display()))?;
    prog.attach_to_link(link)
        .with_context(|| format!("swapping {name} into {}", pin.display()))?;
    Ok(())
}

/// Loads the steering program and swaps it into the link pinned at `pin`.
fn swap_xdp(ebpf: &mut Ebpf, pin: &Path) -> Result<()> {
    let prog: &mut Xdp = program(ebpf, XDP_PROGRAM)?;
    prog.load()
        .with_context(|| format!("loading {XDP_PROGRAM} (the verifier's log follows)"))?;
    let link = PinnedLink::from_pin(pin)
        .with_context(|| format!("opening the pinned link {}", pin.display()))?;
    let link = XdpLink::try_from(FdLink::from(link))
        .with_context(|| format!("{} is not an XDP link", pin.display()))?;
    prog.attach_to_link(link)
        .with_context(|| format!("swapping {XDP_PROGRAM} into {}", pin.display()))?;
    Ok(())
}

/// Attaches the loaded TC program `name` to `iface`'s `hook`.
fn attach_tc(
    prog: &mut SchedClassifier,
    name: &str,
    iface: &str,
    hook: TcAttachType,
) -> Result<SchedClassifierLinkId> {
    // Kernels before 6.6 have no tcx links and attach through a clsact qdisc.
    let tcx = KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0));
    if !tcx && let Err(err) = tc::qdisc_add_clsact(iface) {
        info!("clsact qdisc on {iface}: {err} (already present is fine)");
    }
    let side = match hook {
        TcAttachType::Ingress => "ingress",
        _ => "egress",
    };
    prog.attach(iface, hook)
        .with_context(|| format!("attaching {name} to the {side} of {iface}"))
}

/// Takes TC link `id` from `prog` and pins it at `path`, so it outlives dnsteer.
fn pin_tc_link(
    prog: &mut SchedClassifier,
    id: SchedClassifierLinkId,
    path: &Path,
) -> Result<PinnedLink> {
    let link = FdLink::try_from(prog.take_link(id)?)
        .context("--persist needs TC links that can be pinned (tcx, Linux 6.6 or later)")?;
    pin_link(link, path)
}

fn attach_xdp(
    ebpf: &mut Ebpf,
    iface: &str,
    mode: XdpModeSetting,
) -> Result<(XdpModeSetting, XdpLinkId)> {
    let prog: &mut Xdp = program(ebpf, XDP_PROGRAM)?;
    prog.load()
        .with_context(|| format!("loading {XDP_PROGRAM} (the verifier's log follows)"))?;
    let busy = || {
        format!(
            "attaching {XDP_PROGRAM} to {iface}; if another XDP program is attached there (`ip link show {iface}`), detach it first"
        )
    };
    let id = match mode {
        XdpModeSetting::Driver => prog.attach(iface, XdpMode::Driver).with_context(|| {
            format!("{}; with xdp_mode = \"driver\" the interface's driver must support native XDP: try \"auto\" or \"skb\"", busy())
        })?,
        XdpModeSetting::Skb => prog.attach(iface, XdpMode::Skb).with_context(busy)?,
        XdpModeSetting::Auto => match prog.attach(iface, XdpMode::Driver) {
            Ok(id) => return Ok((XdpModeSetting::Driver, id)),
            Err(err) => {
                warn!(
                    "native XDP is not available on {iface} ({err}); falling back to skb (generic) mode"
                );
                let id = prog.attach(iface, XdpMode::Skb).with_context(busy)?;
                return Ok((XdpModeSetting::Skb, id));
            }
        },
    };
    Ok((mode, id))
}

/// Logs what an instance does, one line per service.
fn describe(config: &Config, instance: &Instance) {
    info!(
        "steering on {} (XDP in {} mode, replies translated on egress), maps pinned under {}",
        config.interface,
        instance.xdp_mode.as_str(),
        instance.pin_dir().display()
    );
    for service in &config.services {
        let listen: Vec<String> = service.listen.iter().map(ToString::to_string).collect();
        let backends: Vec<String> = service.backends.iter().map(ToString::to_string).collect();
        info!(
            "service {}: {} {} -> select {} over {} backend(s): {}",
            service.name,
            service.protocol.as_str(),
            listen.join(", "),
            service.select.as_str(),
            backends.len(),
            backends.join(", ")
        );
        if let Some(h) = &service.health {
            info!(
                "service {}: health query {} every {} (timeout {}), down after {} failures, up after {} successes, expecting {}",
                service.name,
                h.query,
                config::human(h.interval),
                config::human(h.timeout),
                h.fall,
                h.rise,
                h.expect_rcode
                    .map_or_else(|| "any rcode".to_owned(), |r| format!("rcode {r}"))
            );
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
/// How long a control client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

type Pending = (Request, oneshot::Sender<Response>);

/// Stops a spawned task when dropped (the metrics server on shutdown).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Reads one request from a control client, has the main loop answer it, and
/// writes the answer back.
async fn serve(stream: UnixStream, queue: mpsc::Sender<Pending>) {
    let uid = match stream.peer_cred() {
        Ok(cred) => cred.uid(),
        Err(err) => {
            warn!("control socket: cannot tell who connected ({err}); closing");
            return;
        }
    };
    let (read, mut write) = stream.into_split();
    let response = if !control::allowed(uid) {
        warn!("control socket: refused uid {uid}");
        Response::error(
            "",
            format!("uid {uid} may not control dnsteer; run as root"),
        )
    } else {
        let mut line = String::new();
        let mut reader = BufReader::new(read);
        match tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line)).await {
            Err(_) => Response::error("", "no request within 10 s"),
            Ok(Err(err)) => Response::error("", format!("reading the request: {err}")),
            Ok(Ok(_)) => match serde_json::from_str::<Request>(&line) {
                Err(err) => {
                    Response::error("", format!("bad request {:?}: {err}", line.trim_end()))
                }
                Ok(request) => {
                    let (tx, rx) = oneshot::channel();
                    if queue.send((request, tx)).await.is_err() {
                        return; // shutting down
                    }
                    match rx.await {
                        Ok(response) => response,
                        Err(_) => return,
                    }
                }
            },
        }
    };
    let mut out = serde_json::to_string(&response).unwrap_or_default();
    out.push('\n');
    let _ = write.write_all(out.as_bytes()).await;
}

/// `dnsteer run`: runs until SIGINT or SIGTERM.
pub async fn run(opts: RunOptions) -> Result<()> {
    let config = opts.load()?;
    config::check_interface(&opts.config, &config.interface)?;
    caps::require_for_run()?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
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

    let (monitor, mut probe_results) = Monitor::new();
    let persist = opts.persist || config.persist;
    let mut instance = Instance::start(&config, monitor, persist)?;
    describe(&config, &instance);
    info!(
        "running; stop with Ctrl-C or SIGTERM, reload with SIGHUP or by editing {}, change backends with `dnsteer backends --iface {}`, watch with `dnsteer stats --iface {}`",
        opts.config.display(),
        config.interface,
        config.interface
    );
    let (queue, mut requests) = mpsc::channel::<Pending>(16);
    let (scrapes, mut scrape_requests) = mpsc::channel::<Scrape>(16);
    let _metrics = metrics_listener.map(|listener| {
        info!(
            "serving Prometheus metrics on http://{}/metrics",
            listener
                .local_addr()
                .map_or_else(|_| "?".to_owned(), |a| a.to_string())
        );
        AbortOnDrop(tokio::spawn(metrics::serve(listener, scrapes)))
    });
    let mut seen = stamp(&opts.config);
    let mut tick = tokio::time::interval(WATCH_INTERVAL);
    let why = loop {
        tokio::select! {
            _ = sigint.recv() => break "SIGINT",
            _ = sigterm.recv() => break "SIGTERM",
            _ = sighup.recv() => {
                seen = stamp(&opts.config).or(seen);
                instance.reload(&opts, "SIGHUP");
            }
            _ = tick.tick() => {
                let now = stamp(&opts.config);
                // A missing file is an editor mid-save: wait for it to come back.
                if now.is_some() && now != seen {
                    seen = now;
                    instance.reload(&opts, "config file changed");
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(serve(stream, queue.clone()));
                }
                Err(err) => warn!("control socket: accept failed: {err}"),
            },
            Some((request, reply)) = requests.recv() => {
                let _ = reply.send(instance.handle(&request));
                if request.op == Op::Stop {
                    break "dnsteer stop";
                }
            }
            Some(result) = probe_results.recv() => instance.on_probe(result),
            Some(reply) = scrape_requests.recv() => {
                let body = instance
                    .snapshot()
                    .map(|s| metrics::encode(&s))
                    .map_err(|err| format!("reading the counters: {err:#}"));
                let _ = reply.send(body);
            }
        }
    };
    if instance.pins.persist {
        info!(
            "{why}: exiting; the data path on {} keeps running (persist)",
            config.interface
        );
    } else {
        info!("{why}: detaching from {}", config.interface);
    }
    drop(instance);
    info!("bye");
    Ok(())
}

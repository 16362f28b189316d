//! A data path on one interface: brought up fresh (load, fill, attach, pin)
//! or adopted from a persistent instance, and the fast path's reply programs
//! attached as backends come.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use aya::programs::{
    SchedClassifier, TcAttachType, Xdp,
    links::{FdLink, PinnedLink},
};
use log::{info, warn};
use xdp_common::ForwardConf;

use super::{
    REPLY_IN_PROGRAM, TC_PROGRAM, XDP_PROGRAM,
    attach::{attach_tc, attach_xdp, load_tc, pin_link, pin_tc_link, program, swap_tc, swap_xdp},
    expiry::Sweeper,
    maps::{self, KernelMaps},
    pins::{self, Pins},
    route, sockets,
};
use crate::{
    config::{self, Config, Forward, XdpModeSetting},
    live::Live,
};

/// A loaded, attached and pinned data path. Dropping it detaches the programs
/// (the links are owned by the `Ebpf` inside `live`), then removes the pins and
/// releases the lock; a persistent one leaves all three in place.
pub struct Datapath {
    /// The reconciler over the map store; first, so it drops first.
    live: Live<KernelMaps>,
    /// A persistent data path's links, pinned beside the maps.
    links: Vec<PinnedLink>,
    pins: Pins,
    pub xdp_mode: XdpModeSetting,
    /// The steering interface.
    iface: String,
    /// How steered packets leave the node; fixed for the data path's life.
    forward: Forward,
    /// Interfaces whose ingress runs the fast path's reply program.
    reply_ins: BTreeSet<String>,
    /// Removes the records of queries nobody answered.
    sweeper: Sweeper,
    /// The cgroup the socket programs are attached to.
    sockets: Option<PathBuf>,
}

/// Attaches the socket programs where `setting` says. A failure is logged and
/// leaves the interface's data path running: clients off the node are served
/// either way. With `setting` off, a persistent data path's socket links are
/// removed.
fn socket_programs(
    ebpf: &mut aya::Ebpf,
    setting: &config::SocketCgroup,
    pin_dir: Option<&Path>,
) -> Option<PathBuf> {
    let attached = sockets::load(ebpf).and_then(|()| {
        let Some(cgroup) = sockets::resolve(setting)? else {
            return Ok(None);
        };
        sockets::attach(ebpf, &cgroup, pin_dir)?;
        Ok(Some(cgroup))
    });
    match attached {
        Ok(Some(cgroup)) => return Some(cgroup),
        Ok(None) => info!(
            "[sockets] cgroup = \"off\": the node's own clients are not steered (only what arrives on the interface is)"
        ),
        Err(err) => warn!(
            "socket steering is off: {err:#}; the node's own clients (pods and processes on this node) get no answer from the service addresses, clients arriving on the interface are served as before"
        ),
    }
    if let Some(dir) = pin_dir {
        for name in sockets::PROGRAMS {
            let pin = dir.join(format!("{}{name}", sockets::LINK_SOCK));
            if pin.exists() {
                match std::fs::remove_file(&pin) {
                    Ok(()) => info!("removed the socket link {}", pin.display()),
                    Err(err) => warn!("removing {}: {err}", pin.display()),
                }
            }
        }
    }
    None
}

impl Datapath {
    /// Brings up dnsteer on `config.interface`. Nothing stays attached or pinned
    /// when this fails: everything acquired so far is dropped on the way out.
    ///
    /// With `persist`, the maps and links are pinned and stay when it exits; a
    /// data path an earlier persistent instance left is adopted: its maps (and
    /// flows) are kept and brought in line with `config`, and the new programs
    /// are swapped into its links atomically. A failed adoption leaves the old
    /// data path attached and its pins in place.
    pub fn start(config: &Config, persist: bool) -> Result<Self> {
        Self::start_with(config, persist, |_| config.clone())
    }

    /// [`Self::start`], applying what `wanted` makes of the state found (an
    /// adopted data path's, or none) instead of `config` itself: a source
    /// that has not been heard from yet keeps what is there.
    pub fn start_with(
        config: &Config,
        persist: bool,
        wanted: impl FnOnce(&Live<KernelMaps>) -> Config,
    ) -> Result<Self> {
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
            maps::check_layouts(pins.dir(), &maps::layouts(limits, flows))?;
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
        let wanted = wanted(&live);
        let lines = live.apply(&wanted)?;
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
        let sockets = socket_programs(ebpf, &config.sockets, persist.then(|| pins.dir()));
        if !persist {
            pins.pin_maps(ebpf)?;
        }
        pins.persist = persist;
        // From here on packets read the maps: changes wait out grace periods.
        live.store_mut().attached = true;
        let sweeper = Sweeper::start(&live.store_mut().ebpf, config.flows.query_timeout)?;
        Ok(Datapath {
            live,
            links,
            pins,
            xdp_mode,
            iface: config.interface.clone(),
            forward: config.forward,
            reply_ins,
            sweeper,
            sockets,
        })
    }

    /// The cgroup whose sockets are steered, if any.
    pub fn sockets(&self) -> Option<&Path> {
        self.sockets.as_deref()
    }

    /// Backends that were serving before a change (`before`, from
    /// [`Live::serving`]) and are not now: the node's UDP sockets the socket
    /// programs connected to them are closed, so none stays silent. Logged.
    pub fn close_sockets_of_left(&mut self, before: &BTreeSet<SocketAddr>) {
        if self.sockets.is_none() {
            return;
        }
        let now = self.live.serving();
        let left: BTreeSet<SocketAddr> = before.difference(&now).copied().collect();
        match sockets::close_left(&self.live.store().ebpf, &left) {
            Ok(closed) => {
                for (backend, n) in closed {
                    info!(
                        "closed {n} connected UDP socket(s) of this node to {backend}, which left; they reconnect to a serving backend"
                    );
                }
            }
            Err(err) => warn!(
                "backends {left:?} left, but their connected UDP sockets could not be closed: {err:#}"
            ),
        }
    }

    /// Applies a reloaded `[flows] query_timeout`.
    pub fn set_query_timeout(&self, timeout: Duration) {
        self.sweeper.set_timeout(timeout);
    }

    pub fn pin_dir(&self) -> &Path {
        self.pins.dir()
    }

    /// Whether the data path stays when dnsteer exits.
    pub fn persistent(&self) -> bool {
        self.pins.persist
    }

    /// Makes the data path go (`false`) or stay (`true`) when this is dropped.
    pub fn set_persistent(&mut self, persist: bool) {
        self.pins.persist = persist;
    }

    /// The reconciler that owns the maps.
    pub fn live(&self) -> &Live<KernelMaps> {
        &self.live
    }

    pub fn live_mut(&mut self) -> &mut Live<KernelMaps> {
        &mut self.live
    }

    /// With `forward = "redirect"`, runs the reply program on the ingress of
    /// every interface a backend is routed through (adding new ones as
    /// backends come; never removing any while running).
    pub fn sync_fast_path(&mut self) -> Result<()> {
        if self.forward != Forward::Redirect {
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
                        "service {name}: the kernel has no route to backend {backend}; its replies take the stack"
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
                self.links.push(pin_tc_link(prog, id, &pin)?);
            }
            info!(
                "fast path: replies arriving on {iface} are translated there and sent straight out {}",
                self.iface
            );
            self.reply_ins.insert(iface.clone());
        }
        Ok(())
    }
}

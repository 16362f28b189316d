//! `dnsteer run`: validate, load, fill, attach, pin; on SIGINT/SIGTERM undo it all.

use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf,
    programs::{SchedClassifier, TcAttachType, Xdp, XdpMode, tc},
    util::KernelVersion,
};
use log::{info, warn};
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    EBPF_OBJECT, TC_PROGRAM, XDP_PROGRAM,
    config::{self, Config, XdpModeSetting},
    maps::Plan,
    pins::{self, Pins},
};

/// What `dnsteer run` was asked to do.
#[derive(Debug)]
pub struct RunOptions {
    pub config: PathBuf,
    /// Overrides the config's `interface`.
    pub iface: Option<String>,
    /// Overrides the config's `xdp_mode`.
    pub xdp_mode: Option<XdpModeSetting>,
}

/// A loaded, attached and pinned instance. Dropping it detaches the programs
/// (the links are owned by `ebpf`), then removes the pins and releases the lock.
pub struct Instance {
    #[expect(dead_code, reason = "held for its drop: it owns the program links")]
    ebpf: Ebpf,
    pins: Pins,
    pub xdp_mode: XdpModeSetting,
}

impl Instance {
    /// Brings up dnsteer on `config.interface`. Nothing stays attached or pinned
    /// when this fails: everything acquired so far is dropped on the way out.
    pub fn start(config: &Config) -> Result<Self> {
        let iface = config.interface.as_str();
        let pins = Pins::claim(iface)?;
        if pins::attached(iface) {
            bail!(
                "dnsteer is already running on {iface} (its programs are attached there); stop that instance first"
            );
        }
        let mut ebpf = Ebpf::load(EBPF_OBJECT).context(
            "loading the eBPF object; dnsteer needs root (CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON)",
        )?;
        // Maps are filled before anything is attached: the first packet already
        // sees the whole configuration.
        Plan::new(config).apply(&mut ebpf)?;
        // Replies are translated from before the first query is steered.
        attach_tc(&mut ebpf, iface)?;
        let xdp_mode = attach_xdp(&mut ebpf, iface, config.xdp_mode)?;
        pins.pin_maps(&ebpf)?;
        Ok(Instance {
            ebpf,
            pins,
            xdp_mode,
        })
    }

    pub fn pin_dir(&self) -> &std::path::Path {
        self.pins.dir()
    }
}

fn attach_tc(ebpf: &mut Ebpf, iface: &str) -> Result<()> {
    let prog: &mut SchedClassifier = ebpf
        .program_mut(TC_PROGRAM)
        .with_context(|| format!("the eBPF object has no program {TC_PROGRAM}"))?
        .try_into()?;
    prog.load()
        .with_context(|| format!("loading {TC_PROGRAM} (the verifier's log follows)"))?;
    // Kernels before 6.6 have no tcx links and attach through a clsact qdisc.
    let tcx = KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0));
    if !tcx && let Err(err) = tc::qdisc_add_clsact(iface) {
        info!("clsact qdisc on {iface}: {err} (already present is fine)");
    }
    prog.attach(iface, TcAttachType::Egress)
        .with_context(|| format!("attaching {TC_PROGRAM} to the egress of {iface}"))?;
    Ok(())
}

fn attach_xdp(ebpf: &mut Ebpf, iface: &str, mode: XdpModeSetting) -> Result<XdpModeSetting> {
    let prog: &mut Xdp = ebpf
        .program_mut(XDP_PROGRAM)
        .with_context(|| format!("the eBPF object has no program {XDP_PROGRAM}"))?
        .try_into()?;
    prog.load()
        .with_context(|| format!("loading {XDP_PROGRAM} (the verifier's log follows)"))?;
    let busy = || {
        format!(
            "attaching {XDP_PROGRAM} to {iface}; if another XDP program is attached there (`ip link show {iface}`), detach it first"
        )
    };
    match mode {
        XdpModeSetting::Driver => {
            prog.attach(iface, XdpMode::Driver).with_context(|| {
                format!("{}; with xdp_mode = \"driver\" the interface's driver must support native XDP: try \"auto\" or \"skb\"", busy())
            })?;
        }
        XdpModeSetting::Skb => {
            prog.attach(iface, XdpMode::Skb).with_context(busy)?;
        }
        XdpModeSetting::Auto => {
            if let Err(err) = prog.attach(iface, XdpMode::Driver) {
                warn!(
                    "native XDP is not available on {iface} ({err}); falling back to skb (generic) mode"
                );
                prog.attach(iface, XdpMode::Skb).with_context(busy)?;
                return Ok(XdpModeSetting::Skb);
            }
            return Ok(XdpModeSetting::Driver);
        }
    }
    Ok(mode)
}

/// Logs what an instance does, one line per service.
fn describe(config: &Config, instance: &Instance) {
    info!(
        "steering UDP on {} (XDP in {} mode, replies translated on egress), maps pinned under {}",
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
    }
}

/// `dnsteer run`: runs until SIGINT or SIGTERM.
pub async fn run(opts: RunOptions) -> Result<()> {
    let mut config = config::load(&opts.config)?;
    if let Some(iface) = opts.iface {
        config.interface = iface;
    }
    if let Some(mode) = opts.xdp_mode {
        config.xdp_mode = mode;
    }
    config::check_interface(&opts.config, &config.interface)?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;

    let instance = Instance::start(&config)?;
    describe(&config, &instance);
    info!(
        "running; stop with Ctrl-C or SIGTERM, watch with `dnsteer stats --iface {}`",
        config.interface
    );
    let why = tokio::select! {
        _ = sigint.recv() => "SIGINT",
        _ = sigterm.recv() => "SIGTERM",
    };
    info!("{why}: detaching from {}", config.interface);
    drop(instance);
    info!("detached; bye");
    Ok(())
}

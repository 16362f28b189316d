//! Loading the programs, attaching them to interfaces, pinning their links,
//! and swapping new programs into links a persistent data path left pinned.

use std::path::Path;

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    programs::{
        SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        tc::{self, SchedClassifierLink, SchedClassifierLinkId},
        xdp::{XdpLink, XdpLinkId},
    },
    util::KernelVersion,
};
use log::{info, warn};

use super::XDP_PROGRAM;
use crate::config::XdpModeSetting;

/// One of the object's programs, by name and type.
pub fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let prog = ebpf
        .program_mut(name)
        .with_context(|| format!("the eBPF object has no program {name}"))?;
    Ok(prog.try_into()?)
}

pub fn pin_link(link: FdLink, path: &Path) -> Result<PinnedLink> {
    link.pin(path)
        .with_context(|| format!("pinning a link at {}", path.display()))
}

pub fn load_tc(ebpf: &mut Ebpf, name: &str) -> Result<()> {
    let prog: &mut SchedClassifier = program(ebpf, name)?;
    prog.load()
        .with_context(|| format!("loading {name} (the verifier's log follows)"))?;
    Ok(())
}

/// Swaps the loaded TC program `name` into the link pinned at `pin`.
pub fn swap_tc(ebpf: &mut Ebpf, name: &str, pin: &Path) -> Result<()> {
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
pub fn swap_xdp(ebpf: &mut Ebpf, pin: &Path) -> Result<()> {
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
pub fn attach_tc(
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
pub fn pin_tc_link(
    prog: &mut SchedClassifier,
    id: SchedClassifierLinkId,
    path: &Path,
) -> Result<PinnedLink> {
    let link = FdLink::try_from(prog.take_link(id)?)
        .context("--persist needs TC links that can be pinned (tcx, Linux 6.6 or later)")?;
    pin_link(link, path)
}

pub fn attach_xdp(
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

//! The bench's topology: the test bed's client — node (`eth3`) — four backends,
//! with what capacity runs add to it: an XDP responder on every backend, the
//! floor program on the node's backend veths so they take the responders'
//! XDP_TX frames, and a route back to the load generator's source range.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf, EbpfLoader,
    programs::{Xdp, XdpMode, xdp::XdpLinkId},
};
use testbed::{BACKEND_IFACE, CLIENT_IFACE, NetNs, Topology, TopologyConfig};

/// The trivial XDP_PASS program (xdp-ebpf/src/bench.rs, in the bench object).
pub const PASS_PROGRAM: &str = "bench_pass";
/// The XDP DNS responder (xdp-ebpf/src/bench.rs).
pub const RESPONDER_PROGRAM: &str = "bench_responder";
/// kxdpgun's sources: RFC 2544's benchmarking range, one address per 63,536
/// queries (it walks the source ports first), so every query is a new flow.
pub const LOADGEN_SOURCES: &str = "198.18.0.0/16";
/// The bench object's file name: xdp-ebpf's second binary target.
const BENCH_OBJECT: &str = "xdp-ebpf-bench";

/// The bench's own object (`bench_pass`, `bench_responder`): xdp-loader's
/// build script writes it beside dnsteer's object to its OUT_DIR, which cargo
/// names in its JSON messages.
pub fn ebpf_object() -> Result<PathBuf> {
    let out = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["build", "--package", "xdp-loader", "--message-format=json"])
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo build --message-format=json")?;
    if !out.status.success() {
        bail!("cargo build --package xdp-loader failed: {}", out.status);
    }
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let is_loader = msg["package_id"]
            .as_str()
            .is_some_and(|id| id.contains("xdp-loader"));
        if msg["reason"] == "build-script-executed"
            && is_loader
            && let Some(dir) = msg["out_dir"].as_str()
        {
            let object = Path::new(dir).join(BENCH_OBJECT);
            if object.exists() {
                return Ok(object);
            }
        }
    }
    bail!("cargo named no OUT_DIR of xdp-loader holding the {BENCH_OBJECT} object")
}

/// The topology with responders attached. Drop order: programs (detaching
/// them) before the namespaces they are attached in.
pub struct Bed {
    programs: Ebpf,
    responders: Vec<XdpLinkId>,
    pub topo: Topology,
    /// The node's `eth3` MAC, for the load generator's frames.
    pub node_mac: String,
}

impl Bed {
    pub fn build(object: &Path) -> Result<Self> {
        let topo = Topology::build(TopologyConfig::default())
            .context("building the namespaces (client, node, 4 BIND backends)")?;
        let iface = topo.config.node_iface.clone();
        let client = topo.config.client_addr.to_string();
        topo.node.run(&[
            "ip",
            "route",
            "add",
            LOADGEN_SOURCES,
            "via",
            &client,
            "dev",
            &iface,
        ])?;
        let node_mac = link_field(&topo.node, &iface, "address")?;
        // The client computes complete UDP checksums, as frames on a wire have
        // them: a veth otherwise hands on CHECKSUM_PARTIAL skbs whose checksum
        // field only XDP would see half-done (kxdpgun fills its own anyway).
        topo.client
            .run(&["ethtool", "-K", CLIENT_IFACE, "tx", "off"])
            .context("turning off checksum offload on the client (ethtool)")?;
        let programs = EbpfLoader::new()
            .load_file(object)
            .with_context(|| format!("loading {}", object.display()))?;
        let mut bed = Self {
            programs,
            responders: Vec::new(),
            topo,
            node_mac,
        };
        for name in [PASS_PROGRAM, RESPONDER_PROGRAM] {
            bed.xdp(name)?
                .load()
                .with_context(|| format!("the verifier refused {name}"))?;
        }
        // Each backend veth end on the node runs the floor program: a veth only
        // accepts XDP frames (the responders' XDP_TX) when its end has XDP or GRO.
        let node_ifaces: Vec<String> = bed
            .topo
            .backends
            .iter()
            .map(|b| b.node_iface.clone())
            .collect();
        let node = &bed.topo.node;
        let pass: &mut Xdp = bed
            .programs
            .program_mut(PASS_PROGRAM)
            .context("no floor program")?
            .try_into()?;
        for iface in &node_ifaces {
            node.enter(|| pass.attach(iface, XdpMode::Driver))
                .with_context(|| format!("attaching {PASS_PROGRAM} to {iface} on the node"))?;
        }
        bed.attach_responders()?;
        Ok(bed)
    }

    fn xdp(&mut self, name: &str) -> Result<&mut Xdp> {
        let program = self
            .programs
            .program_mut(name)
            .with_context(|| format!("no program {name} in the eBPF object"))?;
        Ok(program.try_into()?)
    }

    /// Puts the XDP responder on every backend's interface (native mode).
    pub fn attach_responders(&mut self) -> Result<()> {
        if !self.responders.is_empty() {
            return Ok(());
        }
        let Self {
            programs,
            responders,
            topo,
            ..
        } = self;
        let responder: &mut Xdp = programs
            .program_mut(RESPONDER_PROGRAM)
            .context("no responder program")?
            .try_into()?;
        for backend in &topo.backends {
            let link = backend
                .ns
                .enter(|| responder.attach(BACKEND_IFACE, XdpMode::Driver))
                .with_context(|| format!("attaching the responder in {}", backend.ns.name()))?;
            responders.push(link);
        }
        Ok(())
    }

    /// Takes the responders off, so queries reach BIND.
    pub fn detach_responders(&mut self) -> Result<()> {
        let links = std::mem::take(&mut self.responders);
        let responder = self.xdp(RESPONDER_PROGRAM)?;
        for link in links {
            responder.detach(link)?;
        }
        Ok(())
    }

    /// The floor program, loaded (for BPF_PROG_TEST_RUN).
    pub fn pass_program(&self) -> Result<&Xdp> {
        let program = self
            .programs
            .program(PASS_PROGRAM)
            .context("no floor program")?;
        Ok(program.try_into()?)
    }

    /// The client-facing service address the load is sent to.
    pub fn service(&self) -> SocketAddr {
        self.topo.service_targets()[0]
    }

    pub fn backend_addrs(&self) -> Vec<Ipv4Addr> {
        self.topo.backend_addrs()
    }

    /// Removes any XDP program kxdpgun left on the client's interface, so the
    /// kernel's sockets get their replies again.
    pub fn clear_client_xdp(&self) -> Result<()> {
        self.topo
            .client
            .run(&["ip", "link", "set", "dev", CLIENT_IFACE, "xdp", "off"])
            .map(drop)
    }
}

/// A field of `ip -j link show IFACE` in `ns`.
pub fn link_field(ns: &NetNs, iface: &str, field: &str) -> Result<String> {
    let out = ns.run(&["ip", "-j", "-d", "link", "show", "dev", iface])?;
    let links: serde_json::Value = serde_json::from_str(&out).context("parsing ip -j link")?;
    links[0][field]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("ip link show {iface} has no {field}"))
}

/// The id of the XDP program attached to `iface` in `ns`.
pub fn xdp_prog_id(ns: &NetNs, iface: &str) -> Result<u32> {
    let out = ns.run(&["ip", "-j", "-d", "link", "show", "dev", iface])?;
    let links: serde_json::Value = serde_json::from_str(&out).context("parsing ip -j link")?;
    let xdp = &links[0]["xdp"];
    xdp["prog"]["id"]
        .as_u64()
        .or_else(|| xdp["attached"][0]["prog"]["id"].as_u64())
        .and_then(|id| u32::try_from(id).ok())
        .with_context(|| format!("no XDP program on {iface}: {xdp}"))
}

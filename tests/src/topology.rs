//! The test network: client ns --veth-- node ns --(one veth per backend)-- backend ns x N.
//!
//! The node is where dnsteer attaches (on `node_iface`); clients talk to the service
//! addresses on it, backends answer DNS with real BIND. Every host has an IPv4 and an
//! IPv6 address, each family routed the same way; IPv6 duplicate address detection
//! is off in every namespace, so addresses are usable at once.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use anyhow::{Context, Result, bail, ensure};

use crate::{
    bind::{BindServer, DNS_PORT},
    netns::NetNs,
    responder::{Behaviour, Responder},
    tools::require_root_tools,
};

/// The client's only interface (the veth peer of the node's `node_iface`).
pub const CLIENT_IFACE: &str = "eth0";
/// Each backend's only interface (the veth peer of its [`BackendHost::node_iface`]).
pub const BACKEND_IFACE: &str = "eth0";
/// How long a freshly started named gets to answer.
const DNS_READY_TIMEOUT: Duration = Duration::from_secs(15);
/// Linux IFNAMSIZ - 1; address labels are limited the same way.
const MAX_IFNAME: usize = 15;

/// Every address, prefix and count of a [`Topology`]; tests that run side by side can
/// use different values, and nothing below hard-codes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopologyConfig {
    pub backends: usize,
    /// The node's client-facing interface, where dnsteer attaches.
    pub node_iface: String,
    pub client_addr: Ipv4Addr,
    /// On `node_iface`: the first is the primary address, the others are labelled
    /// `<node_iface>:1`, `:2`, ... like an operator's aliases. The client routes via the first.
    pub service_addrs: Vec<Ipv4Addr>,
    /// Prefix of the client/service subnet.
    pub prefix_len: u8,
    /// Backend `i` gets `backend_base + i`.
    pub backend_base: Ipv4Addr,
    /// The node's /32 on every backend veth, the backends' gateway.
    pub node_backend_addr: Ipv4Addr,
    /// The client's IPv6 address.
    pub client_addr6: Ipv6Addr,
    /// IPv6 service addresses on `node_iface` (IPv6 addresses have no labels). The
    /// client routes IPv6 via the first.
    pub service_addrs6: Vec<Ipv6Addr>,
    /// Prefix of the client/service IPv6 subnet.
    pub prefix_len6: u8,
    /// Backend `i` gets `backend_base6 + i`.
    pub backend_base6: Ipv6Addr,
    /// The node's /128 on every backend veth, the backends' IPv6 gateway.
    pub node_backend_addr6: Ipv6Addr,
    /// Start BIND on every backend.
    pub dns: bool,
    /// BIND's `max-udp-size` and `edns-udp-size` on every backend: a UDP answer up to
    /// this size (and the client's EDNS buffer size) leaves whole, fragmented by the
    /// backend's kernel if it exceeds the MTU. None keeps BIND's default, 1232 bytes.
    pub dns_max_udp_size: Option<u16>,
}

impl Default for TopologyConfig {
    fn default() -> Self {
        Self {
            backends: 4,
            node_iface: "eth3".to_owned(),
            client_addr: Ipv4Addr::new(192, 0, 2, 100),
            service_addrs: vec![Ipv4Addr::new(192, 0, 2, 10), Ipv4Addr::new(192, 0, 2, 11)],
            prefix_len: 24,
            backend_base: Ipv4Addr::new(10, 100, 13, 2),
            node_backend_addr: Ipv4Addr::new(10, 100, 13, 1),
            client_addr6: "2001:db8::100".parse().expect("an IPv6 address"),
            service_addrs6: vec![
                "2001:db8::10".parse().expect("an IPv6 address"),
                "2001:db8::11".parse().expect("an IPv6 address"),
            ],
            prefix_len6: 64,
            backend_base6: "2001:db8:13::2".parse().expect("an IPv6 address"),
            node_backend_addr6: "2001:db8:13::1".parse().expect("an IPv6 address"),
            dns: true,
            dns_max_udp_size: None,
        }
    }
}

impl TopologyConfig {
    /// Address of backend `i`, or None if it would leave the IPv4 space.
    pub fn backend_addr(&self, i: usize) -> Option<Ipv4Addr> {
        let i = u32::try_from(i).ok()?;
        u32::from(self.backend_base)
            .checked_add(i)
            .map(Ipv4Addr::from)
    }

    /// IPv6 address of backend `i`, or None if it would leave the IPv6 space.
    pub fn backend_addr6(&self, i: usize) -> Option<Ipv6Addr> {
        let i = u128::try_from(i).ok()?;
        u128::from(self.backend_base6)
            .checked_add(i)
            .map(Ipv6Addr::from)
    }

    /// The node-side veth of backend `i`.
    pub fn backend_node_iface(&self, i: usize) -> String {
        format!("be{i}")
    }

    /// The label of service address `k >= 1` (`eth3:1`, ...).
    pub fn alias_label(&self, k: usize) -> String {
        format!("{}:{k}", self.node_iface)
    }

    pub fn validate(&self) -> Result<()> {
        let iface = &self.node_iface;
        ensure!(
            !iface.is_empty()
                && iface.len() <= MAX_IFNAME
                && iface != "lo"
                && !iface.contains(['/', ':'])
                && !iface.contains(char::is_whitespace),
            "TopologyConfig.node_iface {iface:?} must be 1-{MAX_IFNAME} characters, not \"lo\", without '/', ':' or spaces"
        );
        ensure!(
            !self.service_addrs.is_empty(),
            "TopologyConfig.service_addrs is empty; give at least the primary address"
        );
        let last_label = self.alias_label(self.service_addrs.len() - 1);
        ensure!(
            last_label.len() <= MAX_IFNAME,
            "TopologyConfig.node_iface {iface:?} is too long for the alias label {last_label:?} (at most {MAX_IFNAME} characters)"
        );
        ensure!(
            (1..=30).contains(&self.prefix_len),
            "TopologyConfig.prefix_len {} must be 1-30 so client and node share a subnet",
            self.prefix_len
        );
        let mask = u32::MAX << (32 - u32::from(self.prefix_len));
        let subnet = |a: Ipv4Addr| u32::from(a) & mask;
        for (k, addr) in self.service_addrs.iter().enumerate() {
            ensure!(
                subnet(*addr) == subnet(self.client_addr),
                "TopologyConfig.service_addrs[{k}] {addr} is not in client_addr {}/{}",
                self.client_addr,
                self.prefix_len
            );
            ensure!(
                *addr != self.client_addr && !self.service_addrs[..k].contains(addr),
                "TopologyConfig.service_addrs[{k}] {addr} duplicates another address"
            );
        }
        if let Some(size) = self.dns_max_udp_size {
            ensure!(
                (512..=4096).contains(&size),
                "TopologyConfig.dns_max_udp_size {size} must be 512-4096 (BIND's range)"
            );
        }
        ensure!(
            !self.service_addrs6.is_empty(),
            "TopologyConfig.service_addrs6 is empty; give at least the client's IPv6 gateway"
        );
        ensure!(
            (1..=126).contains(&self.prefix_len6),
            "TopologyConfig.prefix_len6 {} must be 1-126 so client and node share a subnet",
            self.prefix_len6
        );
        let mask6 = u128::MAX << (128 - u32::from(self.prefix_len6));
        let subnet6 = |a: Ipv6Addr| u128::from(a) & mask6;
        for (k, addr) in self.service_addrs6.iter().enumerate() {
            ensure!(
                subnet6(*addr) == subnet6(self.client_addr6),
                "TopologyConfig.service_addrs6[{k}] {addr} is not in client_addr6 {}/{}",
                self.client_addr6,
                self.prefix_len6
            );
            ensure!(
                *addr != self.client_addr6 && !self.service_addrs6[..k].contains(addr),
                "TopologyConfig.service_addrs6[{k}] {addr} duplicates another address"
            );
        }
        for i in 0..self.backends {
            let Some(addr6) = self.backend_addr6(i) else {
                bail!(
                    "TopologyConfig: {} backends from backend_base6 {} run past the IPv6 space",
                    self.backends,
                    self.backend_base6
                );
            };
            ensure!(
                addr6 != self.node_backend_addr6,
                "TopologyConfig: backend {i} IPv6 address {addr6} equals node_backend_addr6"
            );
            let Some(addr) = self.backend_addr(i) else {
                bail!(
                    "TopologyConfig: {} backends from backend_base {} run past 255.255.255.255",
                    self.backends,
                    self.backend_base
                );
            };
            ensure!(
                addr != self.node_backend_addr,
                "TopologyConfig: backend {i} address {addr} equals node_backend_addr"
            );
            ensure!(
                *iface != self.backend_node_iface(i),
                "TopologyConfig.node_iface {iface:?} collides with backend {i}'s veth name"
            );
        }
        Ok(())
    }
}

/// One backend host: its namespace, addresses and (if configured) named.
pub struct BackendHost {
    // Declared before `ns`: fields drop in order, and named must be gone before its
    // namespace is deleted, or the namespace outlives the test.
    dns: Option<BindServer>,
    // Also before `ns`: its thread lives in the namespace.
    responder: Option<Responder>,
    pub ns: NetNs,
    pub addr: Ipv4Addr,
    pub addr6: Ipv6Addr,
    /// The node-side end of this backend's veth (e.g. `be0`).
    pub node_iface: String,
}

impl BackendHost {
    /// The bytes waiting in this backend's UDP port-53 sockets' receive queues
    /// (`rx_queue` of `/proc/net/udp` and `udp6`, summed): what named has received but
    /// not yet read.
    pub fn udp_receive_queue(&self) -> Result<u64> {
        self.ns.enter(|| {
            let mut queued = 0;
            for table in ["udp", "udp6"] {
                let path = format!("/proc/thread-self/net/{table}");
                let text =
                    std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
                queued += udp_queue_on_port(&text, DNS_PORT)
                    .with_context(|| format!("parsing {path}"))?;
            }
            Ok(queued)
        })
    }

    /// Where this backend's named listens.
    pub fn dns_target(&self) -> SocketAddr {
        SocketAddr::from((self.addr, DNS_PORT))
    }

    /// Where this backend's named listens over IPv6.
    pub fn dns_target6(&self) -> SocketAddr {
        SocketAddr::from((self.addr6, DNS_PORT))
    }

    /// The pid of the named this test bed started and has not stopped, if any.
    pub fn dns_pid(&self) -> Option<u32> {
        self.dns.as_ref().and_then(BindServer::pid)
    }

    /// named's stderr so far, for failure messages; None without DNS.
    pub fn dns_log(&self) -> Option<String> {
        self.dns.as_ref().map(BindServer::log)
    }

    /// The responder started with [`Topology::start_responder`], if running.
    pub fn responder(&self) -> Option<&Responder> {
        self.responder.as_ref()
    }
}

/// The whole test network. Drop stops every named, then deletes every namespace.
pub struct Topology {
    pub client: NetNs,
    pub node: NetNs,
    pub backends: Vec<BackendHost>,
    pub config: TopologyConfig,
}

impl Topology {
    pub fn build(config: TopologyConfig) -> Result<Self> {
        config.validate()?;
        let tools: &[&str] = if config.dns {
            &["ip", "sysctl", "named"]
        } else {
            &["ip", "sysctl"]
        };
        require_root_tools(tools)?;

        let client = NetNs::new("client")?;
        let node = NetNs::new("node")?;
        no_dad(&client).context("configuring the client's sysctls")?;
        setup_node_sysctls(&node).context("configuring the node's sysctls")?;
        setup_client_link(&config, &client, &node).context("wiring client and node")?;

        let mut backends = Vec::with_capacity(config.backends);
        for i in 0..config.backends {
            let backend = setup_backend(&config, &node, i)
                .with_context(|| format!("setting up backend {i}"))?;
            backends.push(backend);
        }
        let mut topology = Self {
            client,
            node,
            backends,
            config,
        };
        if topology.config.dns {
            // Start all first and wait after, so the servers boot in parallel.
            for (i, backend) in topology.backends.iter_mut().enumerate() {
                let mut server = BindServer::prepare(
                    backend.addr,
                    backend.addr6,
                    &format!("backend-{i}"),
                    topology.config.dns_max_udp_size,
                )?;
                server.start(&backend.ns)?;
                backend.dns = Some(server);
            }
            let mut dns = topology.split().1;
            for i in 0..dns.backends.len() {
                dns.wait_ready(i)?;
            }
        }
        Ok(topology)
    }

    pub fn backend_addrs(&self) -> Vec<Ipv4Addr> {
        self.backends.iter().map(|b| b.addr).collect()
    }

    pub fn backend_addrs6(&self) -> Vec<Ipv6Addr> {
        self.backends.iter().map(|b| b.addr6).collect()
    }

    /// `backend_addrs` with the DNS port.
    pub fn backend_targets(&self) -> Vec<SocketAddr> {
        self.backends.iter().map(BackendHost::dns_target).collect()
    }

    /// `backend_addrs6` with the DNS port.
    pub fn backend_targets6(&self) -> Vec<SocketAddr> {
        self.backends.iter().map(BackendHost::dns_target6).collect()
    }

    /// The backend whose IPv4 or IPv6 address is `addr`.
    pub fn backend_index(&self, addr: IpAddr) -> Option<usize> {
        self.backends
            .iter()
            .position(|b| IpAddr::V4(b.addr) == addr || IpAddr::V6(b.addr6) == addr)
    }

    /// The service addresses with the DNS port: what a client of dnsteer queries.
    pub fn service_targets(&self) -> Vec<SocketAddr> {
        self.config
            .service_addrs
            .iter()
            .map(|a| SocketAddr::from((*a, DNS_PORT)))
            .collect()
    }

    /// The IPv6 service addresses with the DNS port.
    pub fn service_targets6(&self) -> Vec<SocketAddr> {
        self.config
            .service_addrs6
            .iter()
            .map(|a| SocketAddr::from((*a, DNS_PORT)))
            .collect()
    }

    /// Names of all namespaces: client, node, then backends in order.
    pub fn namespace_names(&self) -> Vec<String> {
        [&self.client, &self.node]
            .into_iter()
            .chain(self.backends.iter().map(|b| &b.ns))
            .map(|ns| ns.name().to_owned())
            .collect()
    }

    /// Pids of the named processes running now.
    pub fn dns_pids(&self) -> Vec<u32> {
        self.backends
            .iter()
            .filter_map(BackendHost::dns_pid)
            .collect()
    }

    /// Starts a [`Responder`] on backend `i`'s IPv4 and IPv6 addresses at `port` (UDP
    /// and TCP), in place of or next to named: at [`DNS_PORT`] it takes named's place,
    /// so named must not be running there (build with `dns: false`, or
    /// [`Self::stop_dns`] first). Replaces a responder already running on `i`.
    pub fn start_responder(
        &mut self,
        i: usize,
        port: u16,
        behaviour: Behaviour,
    ) -> Result<&Responder> {
        let n = self.backends.len();
        let backend = self
            .backends
            .get_mut(i)
            .with_context(|| format!("backend {i} does not exist (there are {n})"))?;
        if port == DNS_PORT && backend.dns_pid().is_some() {
            bail!(
                "backend {i} runs named on port {DNS_PORT}; build the topology with dns: false \
                 or stop_dns({i}) before starting a responder there"
            );
        }
        backend.responder = None; // stops the old one first, freeing its port
        let listen = [
            SocketAddr::from((backend.addr, port)),
            SocketAddr::from((backend.addr6, port)),
        ];
        let responder = Responder::start(&backend.ns, &listen, behaviour)
            .with_context(|| format!("backend {i}"))?;
        Ok(backend.responder.insert(responder))
    }

    /// Stops backend `i`'s responder; a no-op if none runs.
    pub fn stop_responder(&mut self, i: usize) {
        if let Some(backend) = self.backends.get_mut(i) {
            backend.responder = None;
        }
    }

    /// Stops backend `i`'s named (SIGTERM, then SIGKILL after 5 s); a no-op if stopped.
    pub fn stop_dns(&mut self, i: usize) -> Result<()> {
        self.split().1.stop(i)
    }

    /// Starts backend `i`'s named again and waits until it answers from the node.
    pub fn start_dns(&mut self, i: usize) -> Result<()> {
        self.split().1.start(i)
    }

    /// Restarts every backend's named with BIND's `udp-receive-buffer` set to
    /// `bytes` (None: the kernel's default, `net.core.rmem_default`) and waits
    /// until each answers.
    pub fn set_dns_receive_buffer(&mut self, bytes: Option<u32>) -> Result<()> {
        for i in 0..self.backends.len() {
            let server = self.backends[i]
                .dns
                .as_mut()
                .context("this topology was built with dns: false")?;
            server.stop()?;
            server.set_udp_receive_buffer(bytes)?;
            self.start_dns(i)?;
        }
        Ok(())
    }

    /// The client namespace and the backends' named processes apart, so a load
    /// can run from the client while named is stopped and started.
    pub fn split(&mut self) -> (&NetNs, DnsControl<'_>) {
        let Self {
            client,
            node,
            backends,
            ..
        } = self;
        (client, DnsControl { node, backends })
    }
}

/// Stops and starts the backends' named; see [`Topology::split`].
pub struct DnsControl<'a> {
    node: &'a NetNs,
    backends: &'a mut [BackendHost],
}

impl<'a> DnsControl<'a> {
    /// The node namespace (dnsteer's).
    pub fn node(&self) -> &'a NetNs {
        self.node
    }

    /// Stops backend `i`'s named (SIGTERM, then SIGKILL after 5 s); a no-op if stopped.
    pub fn stop(&mut self, i: usize) -> Result<()> {
        self.dns_mut(i)?.stop()
    }

    /// See [`BackendHost::udp_receive_queue`].
    pub fn udp_receive_queue(&self, i: usize) -> Result<u64> {
        self.backends
            .get(i)
            .with_context(|| format!("backend {i} does not exist"))?
            .udp_receive_queue()
    }

    /// Starts backend `i`'s named again and waits until it answers from the node.
    pub fn start(&mut self, i: usize) -> Result<()> {
        let backend = self.backend_mut(i)?;
        let server = backend
            .dns
            .as_mut()
            .context("this topology was built with dns: false")?;
        server.start(&backend.ns)?;
        self.wait_ready(i)
    }

    fn wait_ready(&mut self, i: usize) -> Result<()> {
        let node = self.node;
        let backend = self.backend_mut(i)?;
        let server = backend.dns.as_mut().context("backend has no named")?;
        server
            .wait_ready(node, DNS_READY_TIMEOUT)
            .with_context(|| format!("backend {i} ({}) in {}", backend.addr, backend.ns.name()))
    }

    fn backend_mut(&mut self, i: usize) -> Result<&mut BackendHost> {
        let n = self.backends.len();
        self.backends
            .get_mut(i)
            .with_context(|| format!("backend {i} does not exist (there are {n})"))
    }

    fn dns_mut(&mut self, i: usize) -> Result<&mut BindServer> {
        self.backend_mut(i)?
            .dns
            .as_mut()
            .context("this topology was built with dns: false")
    }
}

/// The summed `rx_queue` of the sockets bound to local `port` in a `/proc/net/udp`
/// table (`sl local_address rem_address st tx_queue:rx_queue ...`, hex).
fn udp_queue_on_port(table: &str, port: u16) -> Result<u64> {
    let mut queued = 0;
    for line in table.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(local), Some(queues)) = (fields.get(1), fields.get(4)) else {
            bail!("a short line {line:?}");
        };
        let local_port = local
            .rsplit_once(':')
            .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
            .with_context(|| format!("local address {local:?}"))?;
        let rx = queues
            .split_once(':')
            .and_then(|(_, rx)| u64::from_str_radix(rx, 16).ok())
            .with_context(|| format!("queues {queues:?}"))?;
        if local_port == port {
            queued += rx;
        }
    }
    Ok(queued)
}

impl Drop for Topology {
    fn drop(&mut self) {
        // Processes first: a namespace with a process in it survives `ip netns del`.
        for backend in &mut self.backends {
            backend.responder = None;
            if let Some(server) = backend.dns.as_mut()
                && let Err(e) = server.stop()
            {
                eprintln!("testbed: stopping named in {}: {e:#}", backend.ns.name());
            }
        }
        // The NetNs fields delete their namespaces as they drop.
    }
}

/// IPv6 addresses are usable at once: without this (and `nodad` on each address) an
/// address stays "tentative" for a second or more while DAD runs, and a named started
/// on it cannot bind. `default` first, so interfaces created later inherit it.
fn no_dad(ns: &NetNs) -> Result<()> {
    ns.sysctl("net.ipv6.conf.default.accept_dad", "0")?;
    ns.sysctl("net.ipv6.conf.all.accept_dad", "0")
}

fn setup_node_sysctls(node: &NetNs) -> Result<()> {
    no_dad(node)?;
    node.sysctl("net.ipv4.ip_forward", "1")?;
    node.sysctl("net.ipv6.conf.all.forwarding", "1")?;
    // Replies from backends and clients arrive on interfaces that are not the route back
    // to their source once dnsteer rewrites addresses; strict rp_filter would drop them.
    // `default` first, so interfaces created later start with 0.
    node.sysctl("net.ipv4.conf.default.rp_filter", "0")?;
    node.sysctl("net.ipv4.conf.all.rp_filter", "0")
}

fn no_rp_filter(node: &NetNs, iface: &str) -> Result<()> {
    node.sysctl(&format!("net.ipv4.conf.{iface}.rp_filter"), "0")
}

fn setup_client_link(config: &TopologyConfig, client: &NetNs, node: &NetNs) -> Result<()> {
    let iface = config.node_iface.as_str();
    // Created inside the node with the peer placed straight into the client: the root
    // namespace never sees either end.
    node.run(&[
        "ip",
        "link",
        "add",
        iface,
        "type",
        "veth",
        "peer",
        "name",
        CLIENT_IFACE,
        "netns",
        client.name(),
    ])?;
    no_rp_filter(node, iface)?;
    let prefix = config.prefix_len;
    for (k, addr) in config.service_addrs.iter().enumerate() {
        let cidr = format!("{addr}/{prefix}");
        if k == 0 {
            node.run(&["ip", "addr", "add", &cidr, "dev", iface])?;
        } else {
            let label = config.alias_label(k);
            node.run(&["ip", "addr", "add", &cidr, "dev", iface, "label", &label])?;
        }
    }
    let prefix6 = config.prefix_len6;
    for addr in &config.service_addrs6 {
        let cidr = format!("{addr}/{prefix6}");
        node.run(&["ip", "-6", "addr", "add", &cidr, "dev", iface, "nodad"])?;
    }
    node.run(&["ip", "link", "set", iface, "up"])?;

    let cidr = format!("{}/{prefix}", config.client_addr);
    client.run(&["ip", "addr", "add", &cidr, "dev", CLIENT_IFACE])?;
    let cidr6 = format!("{}/{prefix6}", config.client_addr6);
    client.run(&[
        "ip",
        "-6",
        "addr",
        "add",
        &cidr6,
        "dev",
        CLIENT_IFACE,
        "nodad",
    ])?;
    client.run(&["ip", "link", "set", CLIENT_IFACE, "up"])?;
    let gateway = config.service_addrs[0].to_string();
    client.run(&["ip", "route", "add", "default", "via", &gateway])?;
    let gateway6 = config.service_addrs6[0].to_string();
    client.run(&["ip", "-6", "route", "add", "default", "via", &gateway6])?;
    Ok(())
}

fn setup_backend(config: &TopologyConfig, node: &NetNs, i: usize) -> Result<BackendHost> {
    let addr = config.backend_addr(i).context("backend address overflow")?;
    let addr6 = config
        .backend_addr6(i)
        .context("backend IPv6 address overflow")?;
    let ns = NetNs::new(&format!("be{i}"))?;
    no_dad(&ns)?;
    let node_iface = config.backend_node_iface(i);
    node.run(&[
        "ip",
        "link",
        "add",
        &node_iface,
        "type",
        "veth",
        "peer",
        "name",
        BACKEND_IFACE,
        "netns",
        ns.name(),
    ])?;
    no_rp_filter(node, &node_iface)?;
    // Point-to-point /32s instead of a shared subnet: works without the bridge module and
    // gives every backend its own interface on the node.
    let gateway = config.node_backend_addr.to_string();
    let backend = addr.to_string();
    node.run(&[
        "ip",
        "addr",
        "add",
        &format!("{gateway}/32"),
        "dev",
        &node_iface,
    ])?;
    node.run(&["ip", "link", "set", &node_iface, "up"])?;
    node.run(&[
        "ip",
        "route",
        "add",
        &format!("{backend}/32"),
        "dev",
        &node_iface,
    ])?;

    ns.run(&[
        "ip",
        "addr",
        "add",
        &format!("{backend}/32"),
        "dev",
        BACKEND_IFACE,
    ])?;
    ns.run(&["ip", "link", "set", BACKEND_IFACE, "up"])?;
    ns.run(&[
        "ip",
        "route",
        "add",
        &format!("{gateway}/32"),
        "dev",
        BACKEND_IFACE,
    ])?;
    ns.run(&[
        "ip",
        "route",
        "add",
        "default",
        "via",
        &gateway,
        "dev",
        BACKEND_IFACE,
    ])?;

    // The same for IPv6: /128s on both ends, a device route each way.
    let gateway6 = config.node_backend_addr6.to_string();
    let backend6 = addr6.to_string();
    let host6 = |a: &str| format!("{a}/128");
    node.run(&[
        "ip",
        "-6",
        "addr",
        "add",
        &host6(&gateway6),
        "dev",
        &node_iface,
        "nodad",
    ])?;
    node.run(&[
        "ip",
        "-6",
        "route",
        "add",
        &host6(&backend6),
        "dev",
        &node_iface,
    ])?;
    ns.run(&[
        "ip",
        "-6",
        "addr",
        "add",
        &host6(&backend6),
        "dev",
        BACKEND_IFACE,
        "nodad",
    ])?;
    ns.run(&[
        "ip",
        "-6",
        "route",
        "add",
        &host6(&gateway6),
        "dev",
        BACKEND_IFACE,
    ])?;
    ns.run(&[
        "ip",
        "-6",
        "route",
        "add",
        "default",
        "via",
        &gateway6,
        "dev",
        BACKEND_IFACE,
    ])?;
    Ok(BackendHost {
        dns: None,
        responder: None,
        ns,
        addr,
        addr6,
        node_iface,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_queue_sums_the_sockets_on_the_port() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  100: 0A000002:0035 00000000:0000 07 00000000:00000A00 00:00000000 00000000   106        0 1 2 0 0
  101: 7F000001:0035 00000000:0000 07 00000000:00000100 00:00000000 00000000   106        0 1 2 0 0
  102: 0A000002:0036 00000000:0000 07 00000000:00FF0000 00:00000000 00000000   106        0 1 2 0 0
";
        assert_eq!(udp_queue_on_port(table, 53).unwrap(), 0xa00 + 0x100);
        assert!(udp_queue_on_port("header\n  1: junk\n", 53).is_err());
    }

    #[test]
    fn default_config_is_valid_and_matches_the_documented_layout() {
        let config = TopologyConfig::default();
        config.validate().unwrap();
        assert_eq!(config.backend_addr(0), Some(Ipv4Addr::new(10, 100, 13, 2)));
        assert_eq!(config.backend_addr(3), Some(Ipv4Addr::new(10, 100, 13, 5)));
        assert_eq!(config.alias_label(1), "eth3:1");
        assert_eq!(
            config.backend_addr6(3),
            Some("2001:db8:13::5".parse().unwrap())
        );
    }

    #[test]
    fn invalid_configs_name_the_field() {
        let cases = [
            TopologyConfig {
                service_addrs: vec![],
                ..Default::default()
            },
            TopologyConfig {
                client_addr: Ipv4Addr::new(198, 51, 100, 1),
                ..Default::default()
            },
            TopologyConfig {
                node_iface: "a-very-long-interface".to_owned(),
                ..Default::default()
            },
            TopologyConfig {
                backend_base: Ipv4Addr::new(255, 255, 255, 254),
                ..Default::default()
            },
            TopologyConfig {
                node_backend_addr: Ipv4Addr::new(10, 100, 13, 3),
                ..Default::default()
            },
            TopologyConfig {
                service_addrs6: vec![],
                ..Default::default()
            },
            TopologyConfig {
                client_addr6: "2001:db8:1::100".parse().unwrap(),
                ..Default::default()
            },
            TopologyConfig {
                prefix_len6: 128,
                ..Default::default()
            },
            TopologyConfig {
                node_backend_addr6: "2001:db8:13::4".parse().unwrap(),
                ..Default::default()
            },
            TopologyConfig {
                backend_base6: "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe".parse().unwrap(),
                ..Default::default()
            },
        ];
        for config in cases {
            let err = config.validate().expect_err("must be rejected");
            assert!(format!("{err}").contains("TopologyConfig"), "{err}");
        }
    }
}

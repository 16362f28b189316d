//! dnsteer's TOML config: parsing and validation.
//!
//! Every error names the file, the field and the value, and says what would be
//! accepted, so a config can be fixed from the message alone.
//!
//! `mod.rs` holds the validated shape (what the rest of dnsteer reads),
//! `validate.rs` the checks from TOML to that shape, `values.rs` the spelling
//! of single values, `query.rs` the health probe's question and rcode.

mod query;
mod validate;
mod values;

use std::{
    ffi::CString,
    fmt, fs, io,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

pub use query::{ProbeQuery, Rcode};
use validate::Origin;
pub use validate::{
    kubernetes::{KubernetesSource, PortRef},
    parse, parse_with,
};
use values::one_of;
pub use values::{human, parse_backend_addr, parse_duration};
pub use xdp_common::MAX_WEIGHT;
use xdp_common::{
    FLOW_CAPACITY, MAX_LISTENERS, MAX_SERVICES, PROTO_MASK_TCP, PROTO_MASK_UDP, PROTO_TCP,
    PROTO_UDP,
};

/// The weight of a backend written without one.
pub const DEFAULT_WEIGHT: u32 = 1;

/// Flow table capacity, in entries, when `[flows] size` is absent.
pub const DEFAULT_FLOW_SIZE: u32 = FLOW_CAPACITY;
/// The smallest `[flows] size`.
pub const MIN_FLOW_SIZE: u32 = 1024;
/// The largest `[flows] size`.
pub const MAX_FLOW_SIZE: u32 = 1 << 24;
/// The shortest flow timeout.
pub const MIN_FLOW_TIMEOUT: Duration = Duration::from_millis(100);
/// The longest flow timeout.
pub const MAX_FLOW_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);
/// The longest a UDP query's record waits for its answer: no DNS client waits
/// this long, and a longer wait only keeps dead records in the table.
pub const MAX_QUERY_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// The most services `[limits] services` may ask for: each costs two rings of
/// 8 KiB and 64 backend slots in the kernel.
pub const MAX_LIMIT_SERVICES: u32 = 16384;
/// The most listen entries `[limits] listeners` may ask for.
pub const MAX_LIMIT_LISTENERS: u32 = 1 << 20;

/// The shortest and longest `[service.health] interval`.
pub const MIN_HEALTH_INTERVAL: Duration = Duration::from_millis(100);
pub const MAX_HEALTH_INTERVAL: Duration = Duration::from_secs(60 * 60);
/// The shortest `[service.health] timeout`; the longest is the interval.
pub const MIN_HEALTH_TIMEOUT: Duration = Duration::from_millis(10);
/// The most probes `fall` and `rise` may ask for.
pub const MAX_HEALTH_COUNT: u32 = 100;

/// A validated config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The interface the program attaches to; [`AUTO_INTERFACE`] until
    /// `dnsteer run` chooses one on this node.
    pub interface: String,
    pub xdp_mode: XdpModeSetting,
    /// How steered packets leave the node (`forward`).
    pub forward: Forward,
    pub services: Vec<Service>,
    /// The flow-affinity table: `[flows]`, or its defaults.
    pub flows: FlowSettings,
    /// Leave the data path running when `dnsteer run` exits, and adopt one
    /// left running (`--persist`).
    pub persist: bool,
    /// The kernel maps' capacities: `[limits]`, or their defaults.
    pub limits: Limits,
    /// Where the socket programs attach (`[sockets] cgroup`).
    pub sockets: SocketCgroup,
}

/// `[sockets] cgroup`: the cgroup v2 directory whose processes (and every
/// cgroup below it) have their sockets to a service address steered. Fixed
/// for the life of the data path.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum SocketCgroup {
    /// No socket steering: only what arrives on the interface is steered.
    #[default]
    Off,
    /// The cgroup v2 root, found from `/proc/self/mounts`.
    Auto,
    Path(PathBuf),
}

impl FromStr for SocketCgroup {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(Self::Off),
            "auto" => Ok(Self::Auto),
            path if path.starts_with('/') => Ok(Self::Path(PathBuf::from(path))),
            _ => Err(r#"use "auto" (the cgroup v2 root, from /proc/self/mounts), "off", or the absolute path of a cgroup v2 directory"#.to_owned()),
        }
    }
}

/// How many services and listen entries the kernel maps hold. Fixed for the
/// life of the maps: a change needs a restart (and a persistent data path a
/// `dnsteer stop`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub services: u32,
    /// Listen entries (address, port, protocol) over all services.
    pub listeners: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            services: MAX_SERVICES,
            listeners: MAX_LISTENERS,
        }
    }
}

/// A named group of listen entries sharing one backend set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    pub listen: Vec<Listen>,
    pub protocol: Protocol,
    pub select: Select,
    /// Empty when `kubernetes` feeds the service.
    pub backends: Vec<BackendSpec>,
    /// `[service.health]`: none means every member counts as healthy.
    pub health: Option<HealthCheck>,
    /// The backends come from a Kubernetes Service instead of `backends`
    /// (and the listen addresses too, when `listen` is empty).
    pub kubernetes: Option<KubernetesSource>,
    /// `[service.passive]`: none means no backend is ejected for its answers.
    pub passive: Option<PassiveCheck>,
}

impl Service {
    /// The family of its listen addresses, else of its Kubernetes source's
    /// endpoints (IPv4 unless said otherwise), else of its first backend.
    pub fn family(&self) -> Family {
        self.listen
            .first()
            .map(|l| Family::of(l.addr))
            .or_else(|| {
                self.kubernetes
                    .as_ref()
                    .map(|k| k.family.unwrap_or(Family::Ipv4))
            })
            .or_else(|| self.backends.first().map(|b| Family::of(b.addr.ip())))
            .unwrap_or(Family::Ipv4)
    }
}

/// When a backend is ejected for what its answers show (passive health):
/// over the last `window`, with at least `min_queries` answered or timed out,
/// a share of timeouts or of SERVFAIL answers above its maximum takes it out
/// of selection for `eject_for`.
#[derive(Clone, Debug, PartialEq)]
pub struct PassiveCheck {
    /// Queries that timed out, of those answered or timed out.
    pub max_timeout_ratio: Option<f64>,
    /// SERVFAIL answers, of all answers.
    pub max_servfail_ratio: Option<f64>,
    pub window: Duration,
    pub min_queries: u64,
    pub eject_for: Duration,
}

// The ratios are checked finite when read.
impl Eq for PassiveCheck {}

impl PassiveCheck {
    pub const DEFAULT_WINDOW: Duration = Duration::from_secs(5);
    pub const DEFAULT_MIN_QUERIES: u64 = 50;
    pub const DEFAULT_EJECT_FOR: Duration = Duration::from_secs(10);
}

/// How each backend of a service is probed: a real DNS query, sent to the
/// backend itself every `interval`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    pub query: ProbeQuery,
    pub interval: Duration,
    /// How long one probe waits for its answer; at most `interval`.
    pub timeout: Duration,
    /// Failed probes in a row that take a backend out of selection.
    pub fall: u32,
    /// Good probes in a row that bring it back.
    pub rise: u32,
    /// None: any answer to the question is good (the server is alive).
    pub expect_rcode: Option<Rcode>,
}

impl HealthCheck {
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(500);
    pub const DEFAULT_FALL: u32 = 3;
    pub const DEFAULT_RISE: u32 = 2;
}

/// A listen entry. The unspecified address of a family is its wildcard: any
/// destination address of that family arriving on the interface; `0.0.0.0` is
/// written `*` (as before IPv6), `::` is written `[::]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Listen {
    pub addr: IpAddr,
    pub port: u16,
}

impl Listen {
    /// `*:port`: any IPv4 address.
    pub const fn any_ipv4(port: u16) -> Self {
        Self {
            addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            port,
        }
    }

    /// Whether this is a wildcard (`*` or `[::]`).
    pub fn is_wildcard(&self) -> bool {
        self.addr.is_unspecified()
    }
}

/// An address family; a service's listen addresses and backends are all one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => Family::Ipv4,
            IpAddr::V6(_) => Family::Ipv6,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::Ipv4 => "IPv4",
            Family::Ipv6 => "IPv6",
        })
    }
}

/// A backend and its share of new flows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BackendSpec {
    pub addr: SocketAddr,
    /// 0 to `MAX_WEIGHT`; new flows are spread in proportion to it. 0 drains the
    /// backend: its existing flows stay, it gets no new ones.
    pub weight: u32,
}

/// The state tables: how much they hold and how long they keep it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowSettings {
    /// Each table's capacity in entries: UDP queries in flight, UDP flows'
    /// affinity records, TCP connection records (two per connection).
    pub size: u32,
    /// How long a UDP query's record waits for its answer.
    pub query_timeout: Duration,
    /// How long a UDP flow without packets keeps its backend.
    pub udp_idle_timeout: Duration,
    /// How long a TCP flow without packets keeps its backend.
    pub tcp_idle_timeout: Duration,
    /// How long a TCP flow whose FIN was seen is kept.
    pub tcp_closing_timeout: Duration,
}

impl Default for FlowSettings {
    fn default() -> Self {
        Self {
            size: DEFAULT_FLOW_SIZE,
            query_timeout: Duration::from_secs(5),
            udp_idle_timeout: Duration::from_secs(30),
            tcp_idle_timeout: Duration::from_secs(300),
            tcp_closing_timeout: Duration::from_secs(10),
        }
    }
}

/// Defines a fieldless enum spelled in the config by one word per variant, with
/// `as_str`, `Display` and a `FromStr` whose error says what would be accepted.
macro_rules! keyword_enum {
    (
        $(#[$meta:meta])*
        $name:ident { $($(#[$vmeta:meta])* $variant:ident = $word:literal),+ $(,)? }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            const WORDS: &[&str] = &[$($word),+];

            /// The spelling used in the config file and on the command line.
            pub fn as_str(&self) -> &'static str {
                match self {
                    $(Self::$variant => $word),+
                }
            }
        }

        impl FromStr for $name {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($word => Ok(Self::$variant),)+
                    _ => Err(format!("expected {}", one_of(Self::WORDS))),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

keyword_enum! {
    /// How steered packets leave the node.
    Forward {
        /// Queries go back to the stack (XDP_PASS), which routes them and the replies.
        Stack = "stack",
        /// Queries leave through the FIB's next hop from XDP, replies straight
        /// out the steering interface from TC; the stack only where the FIB has
        /// no answer yet.
        Redirect = "redirect",
    }
}

keyword_enum! {
    /// How to attach the XDP program.
    XdpModeSetting {
        /// Native if the driver supports it, generic otherwise.
        Auto = "auto",
        /// Native (driver) mode only.
        Driver = "driver",
        /// Generic (skb) mode.
        Skb = "skb",
    }
}

keyword_enum! {
    /// How a service picks a backend for a new flow.
    Select {
        /// Round robin.
        Nth = "nth",
        /// Uniform random draw.
        Random = "random",
        /// The fewer UDP queries in flight (per weight) of two weighted draws.
        LeastOutstanding = "least_outstanding",
    }
}

keyword_enum! {
    /// The transports a service balances.
    Protocol {
        Udp = "udp",
        Tcp = "tcp",
        /// Both, on the same listen entries and backends.
        UdpTcp = "udp+tcp",
    }
}

impl Protocol {
    /// The IP protocol numbers, as the kernel side matches them: one listen
    /// entry per listen address and protocol.
    pub fn ip_protos(&self) -> &'static [u8] {
        match self {
            Protocol::Udp => &[PROTO_UDP],
            Protocol::Tcp => &[PROTO_TCP],
            Protocol::UdpTcp => &[PROTO_UDP, PROTO_TCP],
        }
    }

    /// The `ServiceConf::protocols` bits the kernel side checks.
    pub fn mask(&self) -> u8 {
        match self {
            Protocol::Udp => PROTO_MASK_UDP,
            Protocol::Tcp => PROTO_MASK_TCP,
            Protocol::UdpTcp => PROTO_MASK_UDP | PROTO_MASK_TCP,
        }
    }

    /// The protocol `ServiceConf::protocols` bits stand for; None for none.
    pub fn from_mask(mask: u8) -> Option<Self> {
        match (mask & PROTO_MASK_UDP != 0, mask & PROTO_MASK_TCP != 0) {
            (true, true) => Some(Protocol::UdpTcp),
            (true, false) => Some(Protocol::Udp),
            (false, true) => Some(Protocol::Tcp),
            (false, false) => None,
        }
    }
}

/// `192.0.2.10:53`, `[2001:db8::10]:53`, `*:53`, `[::]:53`: what `FromStr` reads.
impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.addr {
            IpAddr::V4(addr) if addr.is_unspecified() => write!(f, "*:{}", self.port),
            addr => write!(f, "{}", SocketAddr::new(addr, self.port)),
        }
    }
}

/// A config that failed to load or validate; `Display` is the message for the user.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: cannot read the config: {error}", path.display())]
    Read { path: PathBuf, error: io::Error },
    /// Not TOML, a key dnsteer does not know, or a value of the wrong type.
    #[error("{}: {message}", path.display())]
    Syntax { path: PathBuf, message: String },
    /// A required field is absent.
    #[error("{}: {field} is missing; {hint}", path.display())]
    Missing {
        path: PathBuf,
        field: String,
        hint: String,
    },
    /// A field holds a value dnsteer does not accept; `value` is as written in TOML.
    #[error("{}: {field} = {value}: {reason}", path.display())]
    Invalid {
        path: PathBuf,
        field: String,
        value: String,
        reason: String,
    },
    /// `interface` names no interface on this host.
    #[error(
        "{}: interface = {interface:?}: no such interface ({error}); check `ip link` for the interfaces on this host",
        path.display()
    )]
    UnknownInterface {
        path: PathBuf,
        interface: String,
        error: io::Error,
    },
}

/// `interface = "auto"`: the node's interface holding a listen address or
/// the default route, chosen when `dnsteer run` starts.
pub const AUTO_INTERFACE: &str = "auto";

/// Reads, parses and validates the config at `path`; the interface is not looked up.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    load_with(path, None)
}

/// `load` with `iface` (`--iface`, `DNSTEER_IFACE`) in place of the file's `interface`.
pub fn load_with(path: &Path, iface: Option<&str>) -> Result<Config, ConfigError> {
    let text = fs::read_to_string(path).map_err(|error| ConfigError::Read {
        path: path.to_path_buf(),
        error,
    })?;
    parse_with(&text, path, iface)
}

/// Looks `interface` up on this host and returns its index.
pub fn check_interface(origin: &Path, interface: &str) -> Result<u32, ConfigError> {
    Origin(origin).interface_name(interface)?;
    let name = CString::new(interface).expect("interface_name rejects NUL");
    // SAFETY: `name` is NUL-terminated and outlives the call.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => Err(ConfigError::UnknownInterface {
            path: origin.to_path_buf(),
            interface: interface.to_owned(),
            error: io::Error::last_os_error(),
        }),
        index => Ok(index),
    }
}

#[cfg(test)]
mod tests;

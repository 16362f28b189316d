//! dnsteer's TOML config: parsing and validation.
//!
//! Every error names the file, the field and the value, and says what would be
//! accepted, so a config can be fixed from the message alone.

use std::{
    collections::HashMap,
    ffi::CString,
    fmt, fs, io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use serde::Deserialize;
pub use xdp_common::MAX_WEIGHT;
use xdp_common::{
    FLOW_CAPACITY, MAX_BACKENDS_PER_SERVICE, MAX_LISTENERS, MAX_SERVICES, PROTO_MASK_TCP,
    PROTO_MASK_UDP, PROTO_TCP, PROTO_UDP, SERVICE_NAME_LEN,
};

use crate::probe::{ProbeQuery, Rcode};

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
    /// The interface the program attaches to.
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
    pub backends: Vec<BackendSpec>,
    /// `[service.health]`: none means every member counts as healthy.
    pub health: Option<HealthCheck>,
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

/// The config's word for an IP protocol number `Protocol::ip_protos` returns.
fn ip_proto_word(proto: u8) -> &'static str {
    match proto {
        PROTO_UDP => "udp",
        PROTO_TCP => "tcp",
        _ => unreachable!("ip_protos returns udp and tcp only, not {proto}"),
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

const LISTEN_FORM: &str = r#"IPV4:PORT, [IPV6]:PORT, *:PORT (any IPv4 address) or [::]:PORT (any IPv6 address), e.g. "192.0.2.10:53", "[2001:db8::10]:53" or "*:53""#;
const BACKEND_FORM: &str = r#"IPV4:PORT or [IPV6]:PORT, e.g. "10.0.0.2:53" or "[2001:db8::2]:53""#;
const BACKEND_SPEC_FORM: &str = r#"IPV4:PORT or [IPV6]:PORT, optionally followed by =WEIGHT, e.g. "10.0.0.2:53=3" or "[2001:db8::2]:53=3""#;
const BACKEND_ENTRY_FORM: &str = r#""ADDR:PORT" or { addr = "ADDR:PORT", weight = N }, ADDR an IPv4 address or a bracketed IPv6 one, e.g. { addr = "10.0.0.2:53", weight = 3 }"#;
const DURATION_FORM: &str =
    r#"a number and a unit (ms, s, m or h), e.g. "500ms", "1.5s", "5m" or "1h""#;

impl FromStr for Listen {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, port) = match parse_endpoint(s, LISTEN_FORM)? {
            (None, port) => return Ok(Listen::any_ipv4(port)),
            // `*` is IPv4's wildcard: one spelling keeps the two apart.
            (Some(IpAddr::V4(addr)), port) if addr.is_unspecified() => {
                return Err(format!(
                    r#"0.0.0.0 is not a listen address; write "*:{port}" for any IPv4 address"#
                ));
            }
            (Some(addr), port) => (addr, port),
        };
        let never = "dnsteer never steers packets to multicast or broadcast destinations";
        let reason = match addr {
            IpAddr::V4(v4) if v4.is_multicast() => format!("{v4} is a multicast address; {never}"),
            IpAddr::V4(v4) if v4.is_broadcast() => {
                format!("{v4} is the broadcast address; {never}")
            }
            IpAddr::V6(v6) => match ipv6_problem(v6) {
                Some(problem) => format!("{problem}; a listen address is {LISTEN_FORM}"),
                None if v6.is_multicast() => format!("{v6} is a multicast address; {never}"),
                None => return Ok(Listen { addr, port }),
            },
            IpAddr::V4(_) => return Ok(Listen { addr, port }),
        };
        Err(reason)
    }
}

/// The command line's spelling: `IPV4:PORT` (weight 1) or `IPV4:PORT=WEIGHT`.
impl FromStr for BackendSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, weight) = match s.split_once('=') {
            Some((addr, weight)) => (addr, Some(weight)),
            None => (s, None),
        };
        let addr = backend_addr(addr, BACKEND_SPEC_FORM)?;
        let weight = match weight {
            None => DEFAULT_WEIGHT,
            Some(w) => parse_weight(w).map_err(|reason| format!("weight {w:?}: {reason}"))?,
        };
        Ok(BackendSpec { addr, weight })
    }
}

/// `IPV4:PORT` at weight 1, `IPV4:PORT=WEIGHT` otherwise: what `FromStr` reads.
impl fmt::Display for BackendSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.weight {
            DEFAULT_WEIGHT => write!(f, "{}", self.addr),
            weight => write!(f, "{}={weight}", self.addr),
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

/// Reads, parses and validates the config at `path`; the interface is not looked up.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = fs::read_to_string(path).map_err(|error| ConfigError::Read {
        path: path.to_path_buf(),
        error,
    })?;
    parse(&text, path)
}

/// Parses and validates `text`; `origin` only names the file in messages.
pub fn parse(text: &str, origin: &Path) -> Result<Config, ConfigError> {
    let at = Origin(origin);
    let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax {
        path: origin.to_path_buf(),
        message: e.to_string().trim_end().to_owned(),
    })?;

    let interface = at.required(
        "interface",
        raw.interface,
        r#"set interface = "eth0" to the interface the listen addresses arrive on (see `ip link`)"#,
    )?;
    at.interface_name(&interface)?;
    let xdp_mode = at.keyword("xdp_mode", raw.xdp_mode, XdpModeSetting::Auto)?;
    let forward = at.keyword("forward", raw.forward, Forward::Stack)?;

    let limits = at.limits(raw.limits.unwrap_or_default())?;
    if raw.service.is_empty() {
        return Err(at.missing(
            "[[service]]",
            "add at least one [[service]] with name, listen and backends",
        ));
    }
    if raw.service.len() > limits.services as usize {
        return Err(at.invalid(
            "[[service]]",
            entries(raw.service.len()),
            format!(
                "at most {} services fit in the maps; raise [limits] services (up to {MAX_LIMIT_SERVICES})",
                limits.services
            ),
        ));
    }

    let mut services: Vec<Service> = Vec::with_capacity(raw.service.len());
    let mut names = HashMap::new();
    // (listen entry, IP protocol) -> index of the service that owns it: one map
    // entry each on the kernel side.
    let mut listeners = HashMap::new();
    for (i, raw) in raw.service.into_iter().enumerate() {
        let service = at.service(i, raw)?;
        if let Some(first) = names.insert(service.name.clone(), i) {
            return Err(at.invalid(
                format_args!("service[{i}].name"),
                quoted(&service.name),
                format!("service[{first}] has this name already; give each service its own"),
            ));
        }
        for (j, listen) in service.listen.iter().enumerate() {
            let field = format!("service[{i}] {:?}: listen[{j}]", service.name);
            let value = quoted(&listen.to_string());
            for &proto in service.protocol.ip_protos() {
                if let Some(k) = listeners.insert((*listen, proto), i) {
                    let (owner, word) = (&services[k].name, ip_proto_word(proto));
                    let reason = format!(
                        "service[{k}] {owner:?} listens on {listen} ({word}) already; an address, port and protocol belong to one service"
                    );
                    return Err(at.invalid(field, value, reason));
                }
                if listeners.len() > limits.listeners as usize {
                    return Err(at.invalid(
                        field,
                        value,
                        format!(
                            "at most {} listen entries over all services fit in the maps (a udp+tcp service's entries count twice); raise [limits] listeners (up to {MAX_LIMIT_LISTENERS})",
                            limits.listeners
                        ),
                    ));
                }
            }
        }
        services.push(service);
    }
    let flows = at.flows(raw.flows.unwrap_or_default())?;
    Ok(Config {
        interface,
        xdp_mode,
        forward,
        services,
        flows,
        persist: raw.persist.unwrap_or(false),
        limits,
    })
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

/// Parses a duration: a decimal number and a unit, `ms`, `s`, `m` or `h`
/// (`"500ms"`, `"1.5s"`, `"5m"`, `"1h"`), or a bare number of seconds (`"30"`).
/// Exact to the nanosecond, below which it truncates; callers check the range.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    duration_or_overflow(s)?
        .ok_or_else(|| "too long; a duration is at most 2^64 - 1 seconds".to_owned())
}

/// `parse_duration`, with `None` for a well-formed duration too long for `Duration`,
/// so a caller with a range can say its maximum instead.
fn duration_or_overflow(s: &str) -> Result<Option<Duration>, String> {
    const NANOS_PER_SEC: u128 = 1_000_000_000;
    let expected = || format!("expected {DURATION_FORM}");
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(end);
    let unit_nanos = match unit {
        "ms" => NANOS_PER_SEC / 1000,
        "s" | "" => NANOS_PER_SEC,
        "m" => 60 * NANOS_PER_SEC,
        "h" => 60 * 60 * NANOS_PER_SEC,
        _ => return Err(expected()),
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
        return Err(expected());
    }
    let whole: u128 = match whole.parse::<u64>() {
        Ok(whole) => whole.into(),
        Err(_) if whole.is_empty() => 0,
        // Digits only: more than u64 holds.
        Err(_) => return Ok(None),
    };
    // Digits past the 18th are below a nanosecond even in hours; u128 holds the rest.
    let fraction = &fraction[..fraction.len().min(18)];
    let scale = 10u128.pow(fraction.len() as u32);
    let fraction: u128 = match fraction {
        "" => 0,
        _ => fraction.parse().expect("digits only"),
    };
    let nanos = whole * unit_nanos + fraction * unit_nanos / scale;
    Ok(u64::try_from(nanos / NANOS_PER_SEC)
        .ok()
        .map(|secs| Duration::new(secs, (nanos % NANOS_PER_SEC) as u32)))
}

/// Parses a backend's `IPV4:PORT` or `[IPV6]:PORT`: a concrete unicast address to
/// rewrite packets towards. The command line's `ADDR:PORT` arguments use it too.
pub fn parse_backend_addr(s: &str) -> Result<SocketAddr, String> {
    backend_addr(s, BACKEND_FORM)
}

/// The file as written; validation turns it into a `Config`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    interface: Option<String>,
    xdp_mode: Option<String>,
    forward: Option<String>,
    persist: Option<bool>,
    #[serde(default)]
    service: Vec<RawService>,
    flows: Option<RawFlows>,
    limits: Option<RawLimits>,
}

/// `[limits]`; values are checked by hand to name the field.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    services: Option<toml::Value>,
    listeners: Option<toml::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: Option<String>,
    listen: Option<Vec<String>>,
    protocol: Option<String>,
    select: Option<String>,
    /// Each a string or a table, checked one by one so a bad entry is named.
    backends: Option<Vec<toml::Value>>,
    health: Option<RawHealth>,
}

/// `[service.health]`; values are checked by hand to name the field.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    query: Option<String>,
    interval: Option<toml::Value>,
    timeout: Option<toml::Value>,
    fall: Option<toml::Value>,
    rise: Option<toml::Value>,
    expect_rcode: Option<String>,
}

/// A `backends` entry in table form; values are checked by hand to name the field.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    addr: Option<toml::Value>,
    weight: Option<toml::Value>,
}

/// `[flows]`; values are checked by hand to name the field and accept both
/// spellings of a duration.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFlows {
    size: Option<toml::Value>,
    query_timeout: Option<toml::Value>,
    udp_idle_timeout: Option<toml::Value>,
    tcp_idle_timeout: Option<toml::Value>,
    tcp_closing_timeout: Option<toml::Value>,
}

/// The config file being validated: builds errors that name it.
#[derive(Clone, Copy)]
struct Origin<'a>(&'a Path);

impl Origin<'_> {
    fn missing(self, field: impl fmt::Display, hint: impl fmt::Display) -> ConfigError {
        ConfigError::Missing {
            path: self.0.to_path_buf(),
            field: field.to_string(),
            hint: hint.to_string(),
        }
    }

    fn invalid(
        self,
        field: impl fmt::Display,
        value: String,
        reason: impl Into<String>,
    ) -> ConfigError {
        ConfigError::Invalid {
            path: self.0.to_path_buf(),
            field: field.to_string(),
            value,
            reason: reason.into(),
        }
    }

    fn required<T>(
        self,
        field: impl fmt::Display,
        value: Option<T>,
        hint: impl fmt::Display,
    ) -> Result<T, ConfigError> {
        value.ok_or_else(|| self.missing(field, hint))
    }

    /// An optional keyword field: `default` when absent.
    fn keyword<K: FromStr<Err = String>>(
        self,
        field: impl fmt::Display,
        value: Option<String>,
        default: K,
    ) -> Result<K, ConfigError> {
        value.map_or(Ok(default), |v| {
            v.parse()
                .map_err(|reason| self.invalid(field, quoted(&v), reason))
        })
    }

    /// Linux's rules for a device name (`dev_valid_name`), with a hint for the
    /// `eth3:1` alias labels that `ifconfig` shows as interfaces.
    fn interface_name(self, name: &str) -> Result<(), ConfigError> {
        let alias_of = name
            .split_once(':')
            .map(|(dev, _)| dev)
            .filter(|dev| !dev.is_empty());
        let reason = if name.is_empty() {
            r#"name the interface the listen addresses arrive on, e.g. interface = "eth0" (see `ip link`)"#.to_owned()
        } else if let Some(dev) = alias_of {
            format!(
                "{name:?} is an address label on {dev}, not an interface; use interface = {dev:?} and put the alias's address in `listen`"
            )
        } else if name.len() >= libc::IFNAMSIZ {
            format!(
                "interface names are at most {} bytes; see `ip link`",
                libc::IFNAMSIZ - 1
            )
        } else if name
            .contains(|c: char| matches!(c, '/' | ':') || c.is_whitespace() || c.is_control())
        {
            "interface names cannot contain '/', ':', whitespace or control characters; see `ip link`".to_owned()
        } else {
            return Ok(());
        };
        Err(self.invalid("interface", quoted(name), reason))
    }

    /// A service name fits the kernel's NUL-padded name field and prints on one line.
    fn service_name(self, i: usize, name: &str) -> Result<(), ConfigError> {
        let reason = if name.is_empty() {
            "a service needs a name; it labels stats and logs".to_owned()
        } else if name.len() >= SERVICE_NAME_LEN {
            format!(
                "{} bytes long; at most {} fit in the kernel's name field",
                name.len(),
                SERVICE_NAME_LEN - 1
            )
        } else if name.contains(char::is_control) {
            "names cannot contain control characters".to_owned()
        } else {
            return Ok(());
        };
        Err(self.invalid(format_args!("service[{i}].name"), quoted(name), reason))
    }

    fn service(self, i: usize, raw: RawService) -> Result<Service, ConfigError> {
        let name = self.required(
            format_args!("service[{i}].name"),
            raw.name,
            r#"add name = "dns"; it labels stats and logs"#,
        )?;
        self.service_name(i, &name)?;

        let at = format!("service[{i}] {name:?}");
        let listen = self.listen(&at, raw.listen)?;
        let protocol = self.keyword(format_args!("{at}: protocol"), raw.protocol, Protocol::Udp)?;
        let select = self.keyword(format_args!("{at}: select"), raw.select, Select::Nth)?;
        let backends = self.backends(&at, raw.backends)?;
        self.one_family(&at, &listen, &backends)?;
        let listen = listen.into_iter().map(|(l, _)| l).collect();
        let backends = backends.into_iter().map(|(b, _, _)| b).collect();
        let health = match raw.health {
            Some(raw) => Some(self.health(&at, raw)?),
            None => None,
        };
        Ok(Service {
            name,
            listen,
            protocol,
            select,
            backends,
            health,
        })
    }

    /// `[service.health]` of service `at`.
    fn health(self, at: &str, raw: RawHealth) -> Result<HealthCheck, ConfigError> {
        let field = |key: &str| format!("{at}: health.{key}");
        let query = self.required(
            field("query"),
            raw.query,
            r#"say what to ask each backend, e.g. query = "health.example. A""#,
        )?;
        let query = query
            .parse::<ProbeQuery>()
            .map_err(|reason| self.invalid(field("query"), quoted(&query), reason))?;
        let interval = self.duration(
            &field("interval"),
            raw.interval,
            HealthCheck::DEFAULT_INTERVAL,
            (MIN_HEALTH_INTERVAL, MAX_HEALTH_INTERVAL),
        )?;
        let written_timeout = raw.timeout.as_ref().map(written);
        let timeout = self.duration(
            &field("timeout"),
            raw.timeout,
            HealthCheck::DEFAULT_TIMEOUT.min(interval),
            (MIN_HEALTH_TIMEOUT, MAX_HEALTH_INTERVAL),
        )?;
        if timeout > interval {
            return Err(self.invalid(
                field("timeout"),
                written_timeout.unwrap_or_else(|| human(timeout)),
                format!(
                    "longer than the interval ({}); a probe must end before the next one starts",
                    human(interval)
                ),
            ));
        }
        let count = |key: &str, value: Option<toml::Value>, default: u32| match value {
            None => Ok(default),
            Some(v) => toml_integer(
                &v,
                1,
                MAX_HEALTH_COUNT,
                &format!("use 1 to {MAX_HEALTH_COUNT} probes in a row"),
            )
            .map_err(|reason| self.invalid(field(key), written(&v), reason)),
        };
        let fall = count("fall", raw.fall, HealthCheck::DEFAULT_FALL)?;
        let rise = count("rise", raw.rise, HealthCheck::DEFAULT_RISE)?;
        let expect_rcode = match raw.expect_rcode {
            None => None,
            Some(v) => Some(
                v.parse::<Rcode>()
                    .map_err(|reason| self.invalid(field("expect_rcode"), quoted(&v), reason))?,
            ),
        };
        Ok(HealthCheck {
            query,
            interval,
            timeout,
            fall,
            rise,
            expect_rcode,
        })
    }

    /// A list in service `at`: present, with 1 to `max` entries.
    fn list<T>(
        self,
        at: &str,
        key: &str,
        list: Option<Vec<T>>,
        max: u32,
        example: &str,
    ) -> Result<Vec<T>, ConfigError> {
        let list = self.required(
            format_args!("{at}: {key}"),
            list,
            format_args!("add {key} = {example}"),
        )?;
        if list.is_empty() || list.len() > max as usize {
            let reason = match list.len() {
                0 => format!("needs at least one entry, e.g. {key} = {example}"),
                _ => format!("at most {max} per service are supported"),
            };
            return Err(self.invalid(format_args!("{at}: {key}"), entries(list.len()), reason));
        }
        Ok(list)
    }

    /// The family rule: XDP rewrites a query's destination in place, so it
    /// cannot send an IPv4 query to an IPv6 backend or the reverse. Every listen
    /// entry and backend of service `at` must be of the family of its `listen[0]`.
    fn one_family(
        self,
        at: &str,
        listen: &[(Listen, String)],
        backends: &[(BackendSpec, String, String)],
    ) -> Result<(), ConfigError> {
        let Some((first, written)) = listen.first() else {
            return Ok(());
        };
        let family = Family::of(first.addr);
        let hint = match (first.addr, family) {
            (IpAddr::V4(a), _) if a.is_unspecified() => format!(
                r#" ("*:{0}" is any IPv4 address; "[::]:{0}" is any IPv6 one)"#,
                first.port
            ),
            _ => String::new(),
        };
        let clash = |what: &str, other: Family| {
            format!(
                "an {other} {what} in a service whose listen[0] {written} is {family}{hint}; a service is one family, since XDP rewrites the destination in place and cannot translate between IPv4 and IPv6: put the {other} listen addresses and backends in a service of their own"
            )
        };
        for (j, (l, value)) in listen.iter().enumerate().skip(1) {
            if Family::of(l.addr) != family {
                let reason = clash("listen address", Family::of(l.addr));
                return Err(self.invalid(format!("{at}: listen[{j}]"), value.clone(), reason));
            }
        }
        for (b, field, value) in backends {
            if Family::of(b.addr.ip()) != family {
                let reason = clash("backend", Family::of(b.addr.ip()));
                return Err(self.invalid(field, value.clone(), reason));
            }
        }
        Ok(())
    }

    /// Service `at`'s listen entries, each valid and listed once, with each
    /// entry as written.
    fn listen(
        self,
        at: &str,
        list: Option<Vec<String>>,
    ) -> Result<Vec<(Listen, String)>, ConfigError> {
        let example = r#"["192.0.2.10:53"], ["[2001:db8::10]:53"] or ["*:53"]"#;
        let list = self.list(at, "listen", list, MAX_LIMIT_LISTENERS, example)?;
        let mut seen = HashMap::new();
        list.iter()
            .enumerate()
            .map(|(j, entry)| {
                let field = format!("{at}: listen[{j}]");
                let listen: Listen = entry
                    .parse()
                    .map_err(|reason| self.invalid(&field, quoted(entry), reason))?;
                match seen.insert(listen, j) {
                    Some(first) => Err(self.invalid(
                        field,
                        quoted(entry),
                        format!("the same as listen[{first}]; list each entry once"),
                    )),
                    None => Ok((listen, quoted(entry))),
                }
            })
            .collect()
    }

    /// Service `at`'s backends, each valid and at an address of its own, with
    /// the field and value that hold its address.
    fn backends(
        self,
        at: &str,
        list: Option<Vec<toml::Value>>,
    ) -> Result<Vec<(BackendSpec, String, String)>, ConfigError> {
        let example = r#"["10.0.0.2:53", { addr = "10.0.0.3:53", weight = 3 }]"#;
        let list = self.list(at, "backends", list, MAX_BACKENDS_PER_SERVICE, example)?;
        let mut seen = HashMap::new();
        let backends = list
            .into_iter()
            .enumerate()
            .map(|(j, entry)| {
                let (backend, field, value) =
                    self.backend(&format!("{at}: backends[{j}]"), entry)?;
                match seen.insert(backend.addr, j) {
                    Some(first) => Err(self.invalid(
                        field,
                        value,
                        format!("the same address as backends[{first}]; list each backend once"),
                    )),
                    None => Ok((backend, field, value)),
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        // Without an active backend every new flow would pass unsteered.
        if backends.iter().all(|(b, _, _)| b.weight == 0) {
            return Err(self.invalid(
                format_args!("{at}: backends"),
                entries(backends.len()),
                "every backend has weight 0 (draining); give at least one a weight of 1 or more",
            ));
        }
        Ok(backends)
    }

    /// The `backends` entry `field`, a string or a table; also returns the field
    /// and value that hold its address, to name a duplicate by.
    fn backend(
        self,
        field: &str,
        entry: toml::Value,
    ) -> Result<(BackendSpec, String, String), ConfigError> {
        let table = match entry {
            toml::Value::String(s) => {
                let value = quoted(&s);
                let addr = parse_backend_addr(&s).map_err(|reason| {
                    let reason = table_hint(&s).unwrap_or(reason);
                    self.invalid(field, value.clone(), reason)
                })?;
                let backend = BackendSpec {
                    addr,
                    weight: DEFAULT_WEIGHT,
                };
                return Ok((backend, field.to_owned(), value));
            }
            toml::Value::Table(table) => table,
            other => {
                let reason = format!("expected {BACKEND_ENTRY_FORM}");
                return Err(self.invalid(field, written(&other), reason));
            }
        };
        let shown = written(&toml::Value::Table(table.clone()));
        let raw = RawBackend::deserialize(toml::Value::Table(table))
            .map_err(|e| self.invalid(field, shown, e.message().to_owned()))?;

        let addr_field = format!("{field}.addr");
        let addr = self.required(
            &addr_field,
            raw.addr,
            r#"add addr = "ADDR:PORT", e.g. { addr = "10.0.0.2:53", weight = 3 }"#,
        )?;
        let (addr, value) = match addr {
            toml::Value::String(s) => {
                let value = quoted(&s);
                let addr = parse_backend_addr(&s)
                    .map_err(|reason| self.invalid(&addr_field, value.clone(), reason))?;
                (addr, value)
            }
            other => {
                let reason = format!("expected a quoted {BACKEND_FORM}");
                return Err(self.invalid(addr_field, written(&other), reason));
            }
        };
        let weight = match raw.weight {
            None => DEFAULT_WEIGHT,
            Some(weight) => toml_weight(&weight).map_err(|reason| {
                self.invalid(format!("{field}.weight"), written(&weight), reason)
            })?,
        };
        Ok((BackendSpec { addr, weight }, addr_field, value))
    }

    fn limits(self, raw: RawLimits) -> Result<Limits, ConfigError> {
        let default = Limits::default();
        let count = |key: &str, value: Option<toml::Value>, default: u32, max: u32| match value {
            None => Ok(default),
            Some(v) => toml_integer(&v, 1, max, &format!("use an integer from 1 to {max}"))
                .map_err(|reason| self.invalid(format_args!("limits.{key}"), written(&v), reason)),
        };
        Ok(Limits {
            services: count(
                "services",
                raw.services,
                default.services,
                MAX_LIMIT_SERVICES,
            )?,
            listeners: count(
                "listeners",
                raw.listeners,
                default.listeners,
                MAX_LIMIT_LISTENERS,
            )?,
        })
    }

    fn flows(self, raw: RawFlows) -> Result<FlowSettings, ConfigError> {
        let default = FlowSettings::default();
        let size = match raw.size {
            None => default.size,
            Some(size) => toml_integer(&size, MIN_FLOW_SIZE, MAX_FLOW_SIZE, &size_range())
                .map_err(|reason| self.invalid("flows.size", written(&size), reason))?,
        };
        Ok(FlowSettings {
            size,
            query_timeout: self.duration(
                "flows.query_timeout",
                raw.query_timeout,
                default.query_timeout,
                (MIN_FLOW_TIMEOUT, MAX_QUERY_TIMEOUT),
            )?,
            udp_idle_timeout: self.timeout(
                "flows.udp_idle_timeout",
                raw.udp_idle_timeout,
                default.udp_idle_timeout,
            )?,
            tcp_idle_timeout: self.timeout(
                "flows.tcp_idle_timeout",
                raw.tcp_idle_timeout,
                default.tcp_idle_timeout,
            )?,
            tcp_closing_timeout: self.timeout(
                "flows.tcp_closing_timeout",
                raw.tcp_closing_timeout,
                default.tcp_closing_timeout,
            )?,
        })
    }

    /// A flow timeout: `MIN_FLOW_TIMEOUT` to `MAX_FLOW_TIMEOUT`.
    fn timeout(
        self,
        field: &str,
        value: Option<toml::Value>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        self.duration(field, value, default, (MIN_FLOW_TIMEOUT, MAX_FLOW_TIMEOUT))
    }

    /// A duration string or a number of seconds, `default` when absent, within
    /// `(min, max)`.
    fn duration(
        self,
        field: &str,
        value: Option<toml::Value>,
        default: Duration,
        (min, max): (Duration, Duration),
    ) -> Result<Duration, ConfigError> {
        let Some(value) = value else {
            return Ok(default);
        };
        let range = format!(
            "use a duration from {} to {}, e.g. {:?} or {}",
            human(min),
            human(max),
            human(default),
            default.as_secs_f64()
        );
        let duration = match &value {
            toml::Value::String(s) => duration_or_overflow(s),
            toml::Value::Integer(n) if *n < 0 => Err(format!("negative; {range}")),
            toml::Value::Integer(n) => Ok(Some(Duration::from_secs(n.unsigned_abs()))),
            toml::Value::Float(x) if *x < 0.0 => Err(format!("negative; {range}")),
            // Display writes a float's shortest exact decimal, never an exponent.
            toml::Value::Float(x) => duration_or_overflow(&x.to_string()),
            _ => Err(format!(
                "expected {DURATION_FORM}, or a number of seconds, e.g. 30"
            )),
        };
        let reason = match duration {
            Ok(Some(d)) if d < min => format!("below the minimum of {}; {range}", human(min)),
            Ok(Some(d)) if d <= max => return Ok(d),
            // Longer than the maximum, or than `Duration` holds.
            Ok(_) => format!("above the maximum of {}; {range}", human(max)),
            Err(reason) => reason,
        };
        Err(self.invalid(field, written(&value), reason))
    }
}

/// Parses `IPV4:PORT`, `[IPV6]:PORT`, or `*:PORT` (address `None`); `form` says
/// what the caller accepts.
fn parse_endpoint(s: &str, form: &str) -> Result<(Option<IpAddr>, u16), String> {
    let (addr, port) = if let Some(rest) = s.strip_prefix('[') {
        let Some((host, after)) = rest.split_once(']') else {
            return Err(format!(
                "an IPv6 address opened with [ must close with ]; use {form}"
            ));
        };
        let port = after
            .strip_prefix(':')
            .ok_or_else(|| format!("expected :PORT after [{host}]; use {form}"))?;
        let addr = match host.parse::<Ipv6Addr>() {
            Ok(addr) => addr,
            Err(_) if host.contains('%') => {
                return Err(format!(
                    "{host:?} has a zone index; dnsteer takes no scope ids (nor link-local addresses, which need one); use {form}"
                ));
            }
            Err(_) if host.parse::<Ipv4Addr>().is_ok() => {
                return Err(format!(
                    "{host} is an IPv4 address: write it without brackets, as {host}:{port}"
                ));
            }
            Err(_) => return Err(format!("{host:?} is not an IPv6 address; use {form}")),
        };
        (Some(IpAddr::V6(addr)), port)
    } else if s.matches(':').count() > 1 {
        // "2001:db8::53" could be an address alone, or one with a port.
        return Err(format!(
            "an IPv6 address goes in brackets, followed by the port, as in \"[2001:db8::10]:53\"; use {form}"
        ));
    } else {
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("expected {form}"))?;
        let addr = match host {
            "*" => None,
            _ => Some(IpAddr::V4(host.parse().map_err(|_| {
                format!("{host:?} is not an IPv4 address; use {form}")
            })?)),
        };
        (addr, port)
    };
    match port.parse::<u16>() {
        Ok(0) => Err("port 0 is not allowed; use a port from 1 to 65535".to_owned()),
        Ok(port) => Ok((addr, port)),
        Err(_) => Err(format!(
            "{port:?} is not a port; use a port from 1 to 65535"
        )),
    }
}

/// A backend address: a concrete unicast `IPV4:PORT` or `[IPV6]:PORT`; `form`
/// says what the caller accepts.
fn backend_addr(s: &str, form: &str) -> Result<SocketAddr, String> {
    let (addr, port) = parse_endpoint(s, form)?;
    let addr = addr.ok_or_else(|| format!("`*` is not allowed for a backend; use {form}"))?;
    if let IpAddr::V6(v6) = addr
        && let Some(problem) = ipv6_problem(v6)
    {
        return Err(format!("{problem}; use {form}"));
    }
    let what = match addr {
        IpAddr::V4(v4) if v4.is_broadcast() => "the broadcast address",
        _ if addr.is_unspecified() => "the unspecified address",
        _ if addr.is_multicast() => "a multicast address",
        _ => return Ok(SocketAddr::new(addr, port)),
    };
    Err(format!(
        "{addr} is {what}; a backend needs a unicast host address"
    ))
}

/// What rules out an IPv6 address for a listen entry or a backend, whatever
/// its role: an IPv4-mapped address (it is IPv4, and the kernel side stores
/// IPv4 that way) or a link-local one (it needs a scope id dnsteer does not keep).
fn ipv6_problem(addr: Ipv6Addr) -> Option<String> {
    if let Some(v4) = addr.to_ipv4_mapped() {
        Some(format!(
            "{addr} is an IPv4-mapped address: write the IPv4 address {v4} instead"
        ))
    } else if addr.segments()[0] & 0xffc0 == 0xfe80 {
        Some(format!(
            "{addr} is link-local (fe80::/10), which needs a scope id dnsteer does not handle; use a global or unique local address"
        ))
    } else {
        None
    }
}

/// The command line's `ADDR:PORT=WEIGHT` written in the config, where a weight
/// goes in a table: how to write it instead.
fn table_hint(s: &str) -> Option<String> {
    if !s.contains('=') {
        return None;
    }
    Some(match s.parse::<BackendSpec>() {
        Ok(spec) => format!(
            r#"write a weighted backend as {{ addr = "{}", weight = {} }}"#,
            spec.addr, spec.weight
        ),
        Err(_) => {
            r#"write a weighted backend as a table, e.g. { addr = "10.0.0.2:53", weight = 3 }"#
                .to_owned()
        }
    })
}

/// What a weight may be, for messages.
fn weight_range() -> String {
    format!("use an integer from 0 (drain) to {MAX_WEIGHT}")
}

/// What `[flows] size` may be, for messages.
fn size_range() -> String {
    format!("use an integer from {MIN_FLOW_SIZE} to {MAX_FLOW_SIZE}")
}

/// A weight as the command line writes it.
fn parse_weight(s: &str) -> Result<u32, String> {
    let accepted = weight_range();
    match s.parse::<i64>() {
        Ok(n) => bounded(n, 0, MAX_WEIGHT, &accepted),
        // All digits, but more than i64 holds.
        Err(_) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            Err(format!("above the maximum of {MAX_WEIGHT}; {accepted}"))
        }
        Err(_) => Err(format!("not an integer; {accepted}")),
    }
}

/// A weight as TOML holds it.
fn toml_weight(value: &toml::Value) -> Result<u32, String> {
    toml_integer(value, 0, MAX_WEIGHT, &weight_range())
}

/// An integer from `min` to `max` as TOML holds it; `accepted` says so in messages.
fn toml_integer(value: &toml::Value, min: u32, max: u32, accepted: &str) -> Result<u32, String> {
    match value {
        toml::Value::Integer(n) => bounded(*n, min, max, accepted),
        toml::Value::String(s) if s.parse::<i64>().is_ok() => {
            Err(format!("a string; write {s} without quotes"))
        }
        _ => Err(format!("not an integer; {accepted}")),
    }
}

/// `n` if it is from `min` to `max`; `accepted` says what is, for messages.
fn bounded(n: i64, min: u32, max: u32, accepted: &str) -> Result<u32, String> {
    match u32::try_from(n) {
        Ok(v) if (min..=max).contains(&v) => Ok(v),
        _ if n < i64::from(min) => Err(format!("below the minimum of {min}; {accepted}")),
        _ => Err(format!("above the maximum of {max}; {accepted}")),
    }
}

/// `"a"`, `"a" or "b"`, `"a", "b" or "c"`.
fn one_of(words: &[&str]) -> String {
    match words {
        [] => String::new(),
        [only] => format!("{only:?}"),
        [rest @ .., last] => {
            let rest: Vec<String> = rest.iter().map(|w| format!("{w:?}")).collect();
            format!("{} or {last:?}", rest.join(", "))
        }
    }
}

/// A string value as written in TOML.
fn quoted(s: &str) -> String {
    format!("{s:?}")
}

/// A value as written in TOML; a float keeps its exponent, as `1e300`.
fn written(value: &toml::Value) -> String {
    match value {
        toml::Value::Float(x) if x.is_finite() => format!("{x:?}"),
        _ => value.to_string(),
    }
}

/// A duration in the config's own spelling: `"24h"`, `"5m"`, `"30s"`, `"500ms"`.
pub fn human(d: Duration) -> String {
    let (secs, nanos) = (d.as_secs(), d.subsec_nanos());
    match (secs, nanos) {
        (0, 0) => "0s".to_owned(),
        (s, 0) if s % 3600 == 0 => format!("{}h", s / 3600),
        (s, 0) if s % 60 == 0 => format!("{}m", s / 60),
        (s, 0) => format!("{s}s"),
        _ if nanos % 1_000_000 == 0 => format!("{}ms", d.as_millis()),
        _ => format!("{}s", d.as_secs_f64()),
    }
}

/// A list value, by its length.
fn entries(n: usize) -> String {
    match n {
        0 => "[]".to_owned(),
        _ => format!("[{n} entries]"),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    const FILE: &str = "dnsteer.toml";

    const EXAMPLE: &str = r#"
interface = "eth3"
xdp_mode = "auto"            # auto | driver | skb   (optional, default auto)

[[service]]
name = "dns"
listen = ["192.0.2.10:53", "192.0.2.11:53"]   # or ["*:53"]
protocol = "udp"
select = "nth"
backends = ["10.100.13.2:53", "10.100.13.3:53", "10.100.13.4:53", "10.100.13.5:53"]
"#;

    fn parse_str(text: &str) -> Result<Config, ConfigError> {
        parse(text, Path::new(FILE))
    }

    /// A valid config with one of every key, for the cases below to break one at a time.
    const BASE: &str = r#"interface = "eth3"
xdp_mode = "auto"
[[service]]
name = "dns"
listen = ["192.0.2.10:53"]
protocol = "udp"
select = "nth"
backends = ["10.0.0.2:53"]
"#;

    /// `BASE` with its `key` line set to `value`, or with `key = value` appended to the service.
    fn set(key: &str, value: &str) -> String {
        let line = format!("{key} = {value}\n");
        match BASE.lines().find(|l| l.starts_with(&format!("{key} = "))) {
            Some(old) => BASE.replace(&format!("{old}\n"), &line),
            None => format!("{BASE}{line}"),
        }
    }

    /// `BASE` and a second service.
    fn and_service(name: &str, listen: &str) -> String {
        format!(
            "{BASE}[[service]]\nname = {name:?}\nlisten = {listen}\nbackends = [\"10.0.0.2:53\"]\n"
        )
    }

    /// `BASE` with protocol `first`, and a service "b" on the same listen address with `second`.
    fn protocols(first: &str, second: &str) -> String {
        let text = and_service("b", r#"["192.0.2.10:53"]"#);
        let text = text.replace("protocol = \"udp\"", &format!("protocol = {first:?}"));
        format!("{text}protocol = {second:?}\n")
    }

    /// `BASE` and a `[flows]` table holding `lines`; they start on line 10.
    fn flows(lines: &str) -> String {
        format!("{BASE}[flows]\n{lines}\n")
    }

    /// `BASE` with a `[service.health]` table holding `lines`; they start on line 10.
    fn health(lines: &str) -> String {
        format!("{BASE}[service.health]\n{lines}\n")
    }

    /// A TOML array of strings.
    fn array(entries: impl Iterator<Item = String>) -> String {
        let quoted: Vec<String> = entries.map(|e| format!("{e:?}")).collect();
        format!("[{}]", quoted.join(", "))
    }

    fn backend(a: u8, b: u8, c: u8, d: u8, port: u16, weight: u32) -> BackendSpec {
        BackendSpec {
            addr: SocketAddr::from((Ipv4Addr::new(a, b, c, d), port)),
            weight,
        }
    }

    fn backend6(addr: &str, port: u16, weight: u32) -> BackendSpec {
        BackendSpec {
            addr: SocketAddr::new(addr.parse().unwrap(), port),
            weight,
        }
    }

    #[test]
    fn ipv6_services_and_the_two_wildcards() {
        let text = r#"interface = "eth3"
[[service]]
name = "dns6"
listen = ["[2001:db8::10]:53", "[2001:DB8::11]:53"]
protocol = "udp+tcp"
backends = ["[2001:db8:13::2]:53", { addr = "[2001:db8:13::3]:5353", weight = 2 }]

[[service]]
name = "any4"
listen = ["*:5300"]
backends = ["10.0.0.2:53"]

[[service]]
name = "any6"
listen = ["[::]:5300"]
backends = ["[fd00::2]:53"]
"#;
        let config = parse_str(text).unwrap();
        let dns6 = &config.services[0];
        let shown: Vec<String> = dns6.listen.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["[2001:db8::10]:53", "[2001:db8::11]:53"]);
        assert!(dns6.listen.iter().all(|l| !l.is_wildcard()));
        assert_eq!(
            dns6.backends,
            [
                backend6("2001:db8:13::2", 53, 1),
                backend6("2001:db8:13::3", 5353, 2)
            ]
        );
        // `*` and `[::]` on one port are two entries: any IPv4, any IPv6 address.
        let (any4, any6) = (config.services[1].listen[0], config.services[2].listen[0]);
        assert_eq!(any4, Listen::any_ipv4(5300));
        assert_eq!(
            (any4.to_string(), any6.to_string()),
            ("*:5300".to_owned(), "[::]:5300".to_owned())
        );
        assert!(any4.is_wildcard() && any6.is_wildcard());
        assert_eq!(Family::of(any6.addr), Family::Ipv6);
        for l in [any4, any6, dns6.listen[0]] {
            assert_eq!(l.to_string().parse::<Listen>(), Ok(l));
        }
        // One address and port, IPv6 too, per protocol: udp+tcp takes both.
        let clash = format!(
            "{text}[[service]]\nname = \"b\"\nprotocol = \"tcp\"\nlisten = [\"[2001:db8::11]:53\"]\nbackends = [\"[2001:db8:13::9]:53\"]\n"
        );
        let message = parse_str(&clash).unwrap_err().to_string();
        assert!(
            message.contains(r#"service[3] "b": listen[0] = "[2001:db8::11]:53": service[0] "dns6" listens on [2001:db8::11]:53 (tcp) already"#),
            "{message}"
        );
    }

    #[test]
    fn example_parses() {
        let backends = (2..=5).map(|h| backend(10, 100, 13, h, 53, 1)).collect();
        let expected = Config {
            interface: "eth3".to_owned(),
            xdp_mode: XdpModeSetting::Auto,
            forward: Forward::Stack,
            services: vec![Service {
                name: "dns".to_owned(),
                listen: vec![
                    Listen {
                        addr: Ipv4Addr::new(192, 0, 2, 10).into(),
                        port: 53,
                    },
                    Listen {
                        addr: Ipv4Addr::new(192, 0, 2, 11).into(),
                        port: 53,
                    },
                ],
                protocol: Protocol::Udp,
                select: Select::Nth,
                backends,
                health: None,
            }],
            flows: FlowSettings::default(),
            persist: false,
            limits: Limits::default(),
        };
        assert_eq!(parse_str(EXAMPLE).unwrap(), expected);
    }

    /// The shipped example keeps the iptables rules' four equal backends.
    #[test]
    fn shipped_example_parses() {
        let text = include_str!("../../examples/dnsteer.toml");
        let config = parse(text, Path::new("examples/dnsteer.toml")).unwrap();
        let service = &config.services[..];
        let [service] = service else {
            panic!("one service expected: {service:?}");
        };
        let backends: Vec<BackendSpec> = (2..=5).map(|h| backend(10, 100, 13, h, 53, 1)).collect();
        assert_eq!(service.backends, backends);
        assert_eq!(service.listen.len(), 2);
        assert_eq!(config.flows, FlowSettings::default());

        // Its commented-out tables parse too, and say the defaults.
        let mut open = false;
        let uncommented: Vec<&str> = text
            .lines()
            .map(|line| {
                open = (open && !line.is_empty()) || line.starts_with("# [");
                if open { &line[2..] } else { line }
            })
            .collect();
        let config = parse(&uncommented.join("\n"), Path::new("examples/dnsteer.toml")).unwrap();
        assert_eq!(config.flows, FlowSettings::default());
        let health = config.services[0].health.clone().expect("[service.health]");
        assert_eq!(
            (health.interval, health.timeout, health.fall, health.rise),
            (
                HealthCheck::DEFAULT_INTERVAL,
                HealthCheck::DEFAULT_TIMEOUT,
                HealthCheck::DEFAULT_FALL,
                HealthCheck::DEFAULT_RISE
            )
        );
        assert_eq!(
            health.expect_rcode.map(|r| r.to_string()).as_deref(),
            Some("NOERROR")
        );
        // ... and the IPv6 service beside it.
        let dns6 = &config.services[1];
        assert_eq!(dns6.name, "dns6");
        assert_eq!(dns6.listen[0].to_string(), "[2001:db8::10]:53");
        assert_eq!(dns6.backends.len(), 4);
        assert!(dns6.backends.iter().all(|b| b.addr.is_ipv6()));
    }

    #[test]
    fn defaults_and_wildcard() {
        let text = "interface = \"eth3\"\n[[service]]\nname = \"dns\"\nlisten = [\"*:53\"]\nbackends = [\"10.0.0.2:53\"]\n";
        let config = parse_str(text).unwrap();
        assert_eq!(config.xdp_mode, XdpModeSetting::Auto);
        let service = &config.services[0];
        assert_eq!(service.listen, [Listen::any_ipv4(53)]);
        assert_eq!(service.listen[0].to_string(), "*:53");
        assert_eq!(
            (service.protocol, service.select),
            (Protocol::Udp, Select::Nth)
        );
        assert_eq!(service.protocol.ip_protos(), [PROTO_UDP]);
        assert_eq!(service.backends, [backend(10, 0, 0, 2, 53, 1)]);
        assert_eq!(
            config.flows,
            FlowSettings {
                size: 65536,
                query_timeout: Duration::from_secs(5),
                udp_idle_timeout: Duration::from_secs(30),
                tcp_idle_timeout: Duration::from_secs(300),
                tcp_closing_timeout: Duration::from_secs(10),
            }
        );
        assert_eq!(config.flows.size, DEFAULT_FLOW_SIZE);
    }

    #[test]
    fn weights() {
        let text = set(
            "backends",
            r#"["10.0.0.2:53", { addr = "10.0.0.3:53", weight = 3 }, { addr = "10.0.0.4:53", weight = 0 }, { addr = "10.0.0.5:5353" }, { weight = 100, addr = "10.0.0.6:53" }]"#,
        );
        let config = parse_str(&text).unwrap();
        assert_eq!(
            config.services[0].backends,
            [
                backend(10, 0, 0, 2, 53, 1),
                backend(10, 0, 0, 3, 53, 3),
                backend(10, 0, 0, 4, 53, 0),
                backend(10, 0, 0, 5, 5353, 1),
                backend(10, 0, 0, 6, 53, MAX_WEIGHT),
            ]
        );
        // The same address on another port is another backend.
        let text = set(
            "backends",
            r#"["10.0.0.2:53", { addr = "10.0.0.2:5353", weight = 2 }]"#,
        );
        assert_eq!(parse_str(&text).unwrap().services[0].backends.len(), 2);
        // A multi-line table array reads the same.
        let text = BASE.replace(
            "backends = [\"10.0.0.2:53\"]\n",
            "backends = [\n  { addr = \"10.0.0.2:53\", weight = 0 },\n  \"10.0.0.3:53\",\n]\n",
        );
        assert_eq!(
            parse_str(&text).unwrap().services[0].backends,
            [backend(10, 0, 0, 2, 53, 0), backend(10, 0, 0, 3, 53, 1)]
        );
    }

    #[test]
    fn protocols_and_listen_conflicts() {
        let ip_protos = |word: &str| {
            let config = parse_str(&set("protocol", &format!("{word:?}"))).unwrap();
            let protocol = config.services[0].protocol;
            assert_eq!(protocol.as_str(), word);
            protocol.ip_protos()
        };
        assert_eq!(ip_protos("udp"), [PROTO_UDP]);
        assert_eq!(ip_protos("tcp"), [PROTO_TCP]);
        assert_eq!(ip_protos("udp+tcp"), [PROTO_UDP, PROTO_TCP]);
        // One address and port, two services: one per IP protocol.
        for (first, second) in [("udp", "tcp"), ("tcp", "udp")] {
            let config = parse_str(&protocols(first, second)).unwrap();
            assert_eq!(config.services.len(), 2, "{first} and {second}");
        }
        // An exact address and `*` are separate entries whichever the protocols.
        let text = and_service("b", r#"["*:53"]"#)
            .replace("protocol = \"udp\"", "protocol = \"udp+tcp\"")
            + "protocol = \"udp+tcp\"\n";
        assert_eq!(parse_str(&text).unwrap().services.len(), 2);
        // udp+tcp entries count twice towards MAX_LISTENERS: 512 listens fill it.
        let half = array((1..=MAX_LISTENERS / 2).map(|p| format!("192.0.2.11:{p}")));
        let text = set("listen", &half).replace("protocol = \"udp\"", "protocol = \"udp+tcp\"");
        assert_eq!(parse_str(&text).unwrap().services[0].listen.len(), 512);
    }

    #[test]
    fn flows_table() {
        let config = parse_str(&flows("")).unwrap();
        assert_eq!(config.flows, FlowSettings::default());
        let text = flows(
            "size = 1024\nudp_idle_timeout = \"1.5s\"\ntcp_idle_timeout = 600\ntcp_closing_timeout = 0.5",
        );
        assert_eq!(
            parse_str(&text).unwrap().flows,
            FlowSettings {
                size: 1024,
                query_timeout: Duration::from_secs(5),
                udp_idle_timeout: Duration::from_millis(1500),
                tcp_idle_timeout: Duration::from_secs(600),
                tcp_closing_timeout: Duration::from_millis(500),
            }
        );
        // The bounds are allowed; one key alone keeps the others' defaults.
        let text = flows(
            "size = 16777216\nudp_idle_timeout = \"100ms\"\ntcp_idle_timeout = \"24h\"\ntcp_closing_timeout = 0.1",
        );
        let settings = parse_str(&text).unwrap().flows;
        assert_eq!(
            (settings.size, settings.udp_idle_timeout),
            (MAX_FLOW_SIZE, MIN_FLOW_TIMEOUT)
        );
        assert_eq!(
            (settings.tcp_idle_timeout, settings.tcp_closing_timeout),
            (MAX_FLOW_TIMEOUT, MIN_FLOW_TIMEOUT)
        );
        let settings = parse_str(&flows("tcp_idle_timeout = \"1h\""))
            .unwrap()
            .flows;
        assert_eq!(
            settings,
            FlowSettings {
                tcp_idle_timeout: Duration::from_secs(3600),
                ..FlowSettings::default()
            }
        );
        let settings = parse_str(&flows("query_timeout = \"750ms\""))
            .unwrap()
            .flows;
        assert_eq!(settings.query_timeout, Duration::from_millis(750));
        let err = parse_str(&flows("query_timeout = \"11m\"")).unwrap_err();
        assert!(
            err.to_string().contains("flows.query_timeout") && err.to_string().contains("10m"),
            "{err}"
        );
        // `[flows]` may come before the services.
        let text = BASE.replacen("[[service]]", "[flows]\nsize = 2048\n[[service]]", 1);
        assert_eq!(parse_str(&text).unwrap().flows.size, 2048);
    }

    #[test]
    fn limits_table() {
        assert_eq!(parse_str(BASE).unwrap().limits, Limits::default());
        let text = format!("{BASE}[limits]\nservices = 10000\nlisteners = 20000\n");
        assert_eq!(
            parse_str(&text).unwrap().limits,
            Limits {
                services: 10000,
                listeners: 20000
            }
        );
        // Raised, more services than the default fit.
        let many: String = (0..=MAX_SERVICES)
            .map(|i| format!("[[service]]\nname = \"s{i}\"\nlisten = [\"192.0.2.1:{}\"]\nbackends = [\"10.0.0.2:53\"]\n", i + 1))
            .collect();
        let text = format!(
            "interface = \"eth3\"\n{many}[limits]\nservices = {}\n",
            MAX_SERVICES + 1
        );
        assert_eq!(
            parse_str(&text).unwrap().services.len(),
            MAX_SERVICES as usize + 1
        );
        let err = parse_str(&format!("interface = \"eth3\"\n{many}"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("at most 256 services fit in the maps"),
            "{err}"
        );
    }

    #[test]
    fn health_table() {
        assert_eq!(parse_str(BASE).unwrap().services[0].health, None);
        let check = parse_str(&health(r#"query = "health.example. A""#))
            .unwrap()
            .services[0]
            .health
            .clone()
            .unwrap();
        assert_eq!(check.query.to_string(), "health.example. A");
        assert_eq!(
            (check.interval, check.timeout, check.fall, check.rise),
            (
                HealthCheck::DEFAULT_INTERVAL,
                HealthCheck::DEFAULT_TIMEOUT,
                3,
                2
            )
        );
        assert_eq!(check.expect_rcode, None);
        let text = health(
            "query = \"probe.example TXT\"\ninterval = \"250ms\"\ntimeout = 0.1\nfall = 1\nrise = 5\nexpect_rcode = \"nxdomain\"",
        );
        let check = parse_str(&text).unwrap().services[0]
            .health
            .clone()
            .unwrap();
        assert_eq!(check.query.to_string(), "probe.example. TXT");
        assert_eq!(
            (check.interval, check.timeout, check.fall, check.rise),
            (Duration::from_millis(250), Duration::from_millis(100), 1, 5)
        );
        assert_eq!(
            check.expect_rcode.map(|r| r.to_string()).as_deref(),
            Some("NXDOMAIN")
        );
        // A short interval shortens the default timeout with it.
        let text = health("query = \"h.example.\"\ninterval = \"200ms\"");
        let check = parse_str(&text).unwrap().services[0]
            .health
            .clone()
            .unwrap();
        assert_eq!(check.timeout, Duration::from_millis(200));
    }

    #[test]
    fn human_durations() {
        let ms = Duration::from_millis;
        for (d, text) in [
            (ms(0), "0s"),
            (ms(500), "500ms"),
            (ms(1500), "1500ms"),
            (ms(30_000), "30s"),
            (ms(300_000), "5m"),
            (ms(86_400_000), "24h"),
            (Duration::from_micros(2500), "0.0025s"),
        ] {
            assert_eq!(human(d), text);
            assert_eq!(parse_duration(text), Ok(d), "{text}");
        }
    }

    #[test]
    fn durations() {
        let ms = Duration::from_millis;
        for (text, expected) in [
            ("500ms", ms(500)),
            ("30s", ms(30_000)),
            ("5m", ms(300_000)),
            ("1h", ms(3_600_000)),
            ("1.5s", ms(1500)),
            ("0.1s", ms(100)),
            ("1.25m", ms(75_000)),
            ("0.5h", ms(1_800_000)),
            ("2.5ms", Duration::from_micros(2500)),
            ("30", ms(30_000)),
            ("0.25", ms(250)),
            (".5s", ms(500)),
            ("0", Duration::ZERO),
            ("0.000000001s", Duration::from_nanos(1)),
            // Below a nanosecond truncates.
            ("0.0000000019s", Duration::from_nanos(1)),
            ("0.1000000000000000000001h", ms(360_000)),
        ] {
            assert_eq!(parse_duration(text), Ok(expected), "{text:?}");
        }
        for (text, reason) in [
            ("", "expected a number and a unit"),
            ("s", "expected a number and a unit"),
            (".s", "expected a number and a unit"),
            ("1.2.3s", "expected a number and a unit"),
            ("5d", "expected a number and a unit"),
            ("5 s", "expected a number and a unit"),
            (" 5s", "expected a number and a unit"),
            ("5S", "expected a number and a unit"),
            ("-1s", "expected a number and a unit"),
            ("1e3s", "expected a number and a unit"),
            ("5sec", "expected a number and a unit"),
            ("99999999999999999999s", "too long"),
            ("18446744073709551615h", "too long"),
        ] {
            let message = parse_duration(text).unwrap_err();
            assert!(message.contains(reason), "{text:?}: {message:?}");
        }
        assert_eq!(
            parse_duration("5d").unwrap_err(),
            r#"expected a number and a unit (ms, s, m or h), e.g. "500ms", "1.5s", "5m" or "1h""#
        );
    }

    #[test]
    fn backend_spec_from_str_and_display() {
        for (text, expected, shown) in [
            ("10.0.0.2:53", backend(10, 0, 0, 2, 53, 1), "10.0.0.2:53"),
            (
                "10.0.0.2:53=3",
                backend(10, 0, 0, 2, 53, 3),
                "10.0.0.2:53=3",
            ),
            ("10.0.0.2:53=1", backend(10, 0, 0, 2, 53, 1), "10.0.0.2:53"),
            (
                "10.0.0.2:53=0",
                backend(10, 0, 0, 2, 53, 0),
                "10.0.0.2:53=0",
            ),
            (
                "10.0.0.2:5353=100",
                backend(10, 0, 0, 2, 5353, 100),
                "10.0.0.2:5353=100",
            ),
            (
                "[2001:db8::2]:53=3",
                backend6("2001:db8::2", 53, 3),
                "[2001:db8::2]:53=3",
            ),
            (
                "[2001:DB8:0::2]:5353",
                backend6("2001:db8::2", 5353, 1),
                "[2001:db8::2]:5353",
            ),
        ] {
            let spec: BackendSpec = text.parse().unwrap();
            assert_eq!(spec, expected, "{text:?}");
            assert_eq!(spec.to_string(), shown);
            assert_eq!(shown.parse::<BackendSpec>(), Ok(spec));
        }
        for (text, reason) in [
            (
                "10.0.0.2:53=101",
                r#"weight "101": above the maximum of 100; use an integer from 0 (drain) to 100"#,
            ),
            (
                "10.0.0.2:53=99999999999999999999",
                r#"weight "99999999999999999999": above the maximum of 100"#,
            ),
            ("10.0.0.2:53=-1", r#"weight "-1": below the minimum of 0"#),
            ("10.0.0.2:53=1.5", r#"weight "1.5": not an integer"#),
            ("10.0.0.2:53=", r#"weight "": not an integer"#),
            ("10.0.0.2:53=x", r#"weight "x": not an integer"#),
            ("10.0.0.2:53=3=4", r#"weight "3=4": not an integer"#),
            (
                "10.0.0.2=3",
                "expected IPV4:PORT or [IPV6]:PORT, optionally followed by =WEIGHT",
            ),
            (
                "10.0.0:53=3",
                r#""10.0.0" is not an IPv4 address; use IPV4:PORT or [IPV6]:PORT, optionally followed by =WEIGHT"#,
            ),
            ("[2001:db8::2]:53=101", "above the maximum of 100"),
            ("[fe80::2]:53", "link-local"),
            ("[ff02::1]:53=2", "multicast"),
            ("*:53=2", "`*` is not allowed for a backend"),
            ("10.0.0.2:0", "port 0 is not allowed"),
            ("224.0.0.1:53", "multicast"),
        ] {
            let message = text.parse::<BackendSpec>().unwrap_err();
            assert!(message.contains(reason), "{text:?}: {message:?}");
        }
        assert_eq!(
            parse_backend_addr("10.0.0.2:53"),
            Ok(SocketAddr::from((Ipv4Addr::new(10, 0, 0, 2), 53)))
        );
        assert_eq!(
            parse_backend_addr("10.0.0.2:53=3").unwrap_err(),
            r#""53=3" is not a port; use a port from 1 to 65535"#
        );
        assert_eq!(
            parse_backend_addr("*:53").unwrap_err(),
            r#"`*` is not allowed for a backend; use IPV4:PORT or [IPV6]:PORT, e.g. "10.0.0.2:53" or "[2001:db8::2]:53""#
        );
    }

    #[test]
    fn keywords_round_trip() {
        for mode in [
            XdpModeSetting::Auto,
            XdpModeSetting::Driver,
            XdpModeSetting::Skb,
        ] {
            assert_eq!(mode.as_str().parse::<XdpModeSetting>(), Ok(mode));
        }
        for select in [Select::Nth, Select::Random] {
            assert_eq!(select.as_str().parse::<Select>(), Ok(select));
        }
        for protocol in [Protocol::Udp, Protocol::Tcp, Protocol::UdpTcp] {
            assert_eq!(protocol.as_str().parse::<Protocol>(), Ok(protocol));
        }
        assert_eq!("udp".parse::<Protocol>(), Ok(Protocol::Udp));
        // The CLI's --xdp-mode shares the config's wording.
        assert_eq!(
            "fast".parse::<XdpModeSetting>().unwrap_err(),
            r#"expected "auto", "driver" or "skb""#
        );
        let listen = Listen {
            addr: Ipv4Addr::new(192, 0, 2, 10).into(),
            port: 53,
        };
        assert_eq!(listen.to_string().parse::<Listen>(), Ok(listen));
    }

    /// Each case: a config, how the message starts (file, field and value), and the
    /// reason it must give.
    #[test]
    fn invalid_configs_name_file_field_and_value() {
        let services = (0..=MAX_SERVICES).map(|i| format!("[[service]]\nname = \"s{i}\"\n"));
        let services = format!("interface = \"eth3\"\n{}", services.collect::<String>());
        let listeners = array((1..=MAX_LISTENERS).map(|p| format!("192.0.2.11:{p}")));
        let both = set(
            "listen",
            &array((1..=MAX_LISTENERS / 2 + 1).map(|p| format!("192.0.2.11:{p}"))),
        )
        .replace("protocol = \"udp\"", "protocol = \"udp+tcp\"");
        let backends = array((1..=MAX_BACKENDS_PER_SERVICE + 1).map(|h| format!("10.0.0.{h}:53")));
        let long_name = "n".repeat(SERVICE_NAME_LEN);
        let long_name_head = format!("service[0].name = {long_name:?}");
        #[rustfmt::skip]
        let cases: Vec<(String, &str, &str)> = vec![
            ("interface = \n".into(), "TOML parse error at line 1", "string values must be quoted"),
            (BASE.replace("interface", "interfce"), "TOML parse error at line 1", "unknown field `interfce`"),
            (set("weight", "3"), "TOML parse error at line 9", "unknown field `weight`"),
            (BASE.replace("interface = \"eth3\"", ""), "interface is missing", "ip link"),
            (set("interface", r#""""#), r#"interface = """#, r#"e.g. interface = "eth0""#),
            (
                set("interface", r#""eth3:1""#),
                r#"interface = "eth3:1""#,
                r#""eth3:1" is an address label on eth3, not an interface; use interface = "eth3" and put the alias's address in `listen`"#,
            ),
            (set("interface", r#""a-very-long-name""#), r#"interface = "a-very-long-name""#, "at most 15 bytes"),
            (set("interface", r#""eth 3""#), r#"interface = "eth 3""#, "cannot contain"),
            (set("xdp_mode", r#""native""#), r#"xdp_mode = "native""#, r#"expected "auto", "driver" or "skb""#),
            (set("select", r#""rr""#), r#"service[0] "dns": select = "rr""#, r#"expected "nth" or "random""#),
            (set("protocol", r#""sctp""#), r#"service[0] "dns": protocol = "sctp""#, r#"expected "udp", "tcp" or "udp+tcp""#),
            (set("protocol", r#""tcp+udp""#), r#"service[0] "dns": protocol = "tcp+udp""#, r#"expected "udp", "tcp" or "udp+tcp""#),
            ("interface = \"eth3\"\n".into(), "[[service]] is missing", "add at least one [[service]]"),
            (services, "[[service]] = [257 entries]", "at most 256 services"),
            (BASE.replace("name = \"dns\"", ""), "service[0].name is missing", "add name = "),
            (set("name", r#""""#), r#"service[0].name = """#, "needs a name"),
            (set("name", &format!("{long_name:?}")), &long_name_head, "32 bytes long; at most 31"),
            (and_service("dns", r#"["*:54"]"#), r#"service[1].name = "dns""#, "service[0] has this name"),
            (BASE.replace("listen = [\"192.0.2.10:53\"]", ""), r#"service[0] "dns": listen is missing"#, "add listen = "),
            (set("listen", "[]"), r#"service[0] "dns": listen = []"#, "at least one entry"),
            (set("listen", r#"["192.0.2.10"]"#), r#"service[0] "dns": listen[0] = "192.0.2.10""#, "expected IPV4:PORT, [IPV6]:PORT, *:PORT (any IPv4 address) or [::]:PORT"),
            (set("listen", r#"["192.0.2.300:53"]"#), r#"service[0] "dns": listen[0] = "192.0.2.300:53""#, "not an IPv4 address"),
            (set("listen", r#"["ns1.example:53"]"#), r#"service[0] "dns": listen[0] = "ns1.example:53""#, "not an IPv4 address"),
            (set("listen", r#"["2001:db8::1"]"#), r#"service[0] "dns": listen[0] = "2001:db8::1""#, r#"an IPv6 address goes in brackets, followed by the port, as in "[2001:db8::10]:53""#),
            (set("listen", r#"["2001:db8::1:53"]"#), r#"service[0] "dns": listen[0] = "2001:db8::1:53""#, "goes in brackets"),
            (set("listen", r#"["[2001:db8::1]"]"#), r#"service[0] "dns": listen[0] = "[2001:db8::1]""#, "expected :PORT after [2001:db8::1]"),
            (set("listen", r#"["[2001:db8::1:53"]"#), r#"service[0] "dns": listen[0] = "[2001:db8::1:53""#, "opened with [ must close with ]"),
            (set("listen", r#"["[2001:db8::g]:53"]"#), r#"service[0] "dns": listen[0] = "[2001:db8::g]:53""#, r#""2001:db8::g" is not an IPv6 address"#),
            (set("listen", r#"["[192.0.2.10]:53"]"#), r#"service[0] "dns": listen[0] = "[192.0.2.10]:53""#, "192.0.2.10 is an IPv4 address: write it without brackets, as 192.0.2.10:53"),
            (set("listen", r#"["[fe80::1%eth0]:53"]"#), r#"service[0] "dns": listen[0] = "[fe80::1%eth0]:53""#, "has a zone index"),
            (set("listen", r#"["[fe80::1]:53"]"#), r#"service[0] "dns": listen[0] = "[fe80::1]:53""#, "fe80::1 is link-local"),
            (set("listen", r#"["[::ffff:192.0.2.10]:53"]"#), r#"service[0] "dns": listen[0] = "[::ffff:192.0.2.10]:53""#, "::ffff:192.0.2.10 is an IPv4-mapped address: write the IPv4 address 192.0.2.10 instead"),
            (set("listen", r#"["[ff02::fb]:53"]"#), r#"service[0] "dns": listen[0] = "[ff02::fb]:53""#, "ff02::fb is a multicast address; dnsteer never steers packets to multicast"),
            (set("listen", r#"["224.0.0.251:53"]"#), r#"service[0] "dns": listen[0] = "224.0.0.251:53""#, "224.0.0.251 is a multicast address"),
            (set("listen", r#"["255.255.255.255:53"]"#), r#"service[0] "dns": listen[0] = "255.255.255.255:53""#, "the broadcast address"),
            (set("listen", r#"["[::]:53", "[::]:53"]"#), r#"service[0] "dns": listen[1] = "[::]:53""#, "the same as listen[0]"),
            // The family rule: every listen entry and backend of a service is of listen[0]'s family.
            (set("listen", r#"["[2001:db8::1]:53"]"#), r#"service[0] "dns": backends[0] = "10.0.0.2:53""#, r#"an IPv4 backend in a service whose listen[0] "[2001:db8::1]:53" is IPv6; a service is one family, since XDP rewrites the destination in place and cannot translate between IPv4 and IPv6"#),
            (set("listen", r#"["192.0.2.10:53", "[2001:db8::1]:53"]"#), r#"service[0] "dns": listen[1] = "[2001:db8::1]:53""#, r#"an IPv6 listen address in a service whose listen[0] "192.0.2.10:53" is IPv4"#),
            (set("listen", r#"["[::]:53", "*:53"]"#), r#"service[0] "dns": listen[1] = "*:53""#, r#"an IPv4 listen address in a service whose listen[0] "[::]:53" is IPv6"#),
            (set("backends", r#"["10.0.0.2:53", "[2001:db8::2]:53"]"#), r#"service[0] "dns": backends[1] = "[2001:db8::2]:53""#, "an IPv6 backend in a service whose listen[0] \"192.0.2.10:53\" is IPv4; a service is one family"),
            (set("backends", r#"["10.0.0.2:53", { addr = "[2001:db8::2]:53", weight = 2 }]"#), r#"service[0] "dns": backends[1].addr = "[2001:db8::2]:53""#, "an IPv6 backend"),
            (set("listen", r#"["*:53"]"#).replace("10.0.0.2:53", "[2001:db8::2]:53"), r#"service[0] "dns": backends[0] = "[2001:db8::2]:53""#, r#"whose listen[0] "*:53" is IPv4 ("*:53" is any IPv4 address; "[::]:53" is any IPv6 one)"#),
            (set("listen", r#"["*:0"]"#), r#"service[0] "dns": listen[0] = "*:0""#, "port 0 is not allowed; use a port from 1 to 65535"),
            (set("listen", r#"["*:65536"]"#), r#"service[0] "dns": listen[0] = "*:65536""#, r#""65536" is not a port"#),
            (set("listen", r#"["0.0.0.0:53"]"#), r#"service[0] "dns": listen[0] = "0.0.0.0:53""#, r#"write "*:53""#),
            (set("listen", r#"["*:53", "192.0.2.10:53", "*:53"]"#), r#"service[0] "dns": listen[2] = "*:53""#, "the same as listen[0]"),
            (
                and_service("b", r#"["*:54", "192.0.2.10:53"]"#),
                r#"service[1] "b": listen[1] = "192.0.2.10:53""#,
                r#"service[0] "dns" listens on 192.0.2.10:53 (udp) already"#,
            ),
            // Listen conflicts are per IP protocol.
            (protocols("udp+tcp", "tcp"), r#"service[1] "b": listen[0] = "192.0.2.10:53""#, r#"service[0] "dns" listens on 192.0.2.10:53 (tcp) already"#),
            (protocols("tcp", "udp+tcp"), r#"service[1] "b": listen[0] = "192.0.2.10:53""#, r#"service[0] "dns" listens on 192.0.2.10:53 (tcp) already"#),
            (protocols("udp", "udp+tcp"), r#"service[1] "b": listen[0] = "192.0.2.10:53""#, r#"service[0] "dns" listens on 192.0.2.10:53 (udp) already"#),
            (protocols("tcp", "tcp"), r#"service[1] "b": listen[0] = "192.0.2.10:53""#, "(tcp) already; an address, port and protocol belong to one service"),
            (and_service("b", &listeners), r#"service[1] "b": listen[1023] = "192.0.2.11:1024""#, "at most 1024 listen entries"),
            (both, r#"service[0] "dns": listen[512] = "192.0.2.11:513""#, "at most 1024 listen entries over all services fit in the maps (a udp+tcp service's entries count twice); raise [limits] listeners"),
            (BASE.replace("backends = [\"10.0.0.2:53\"]", ""), r#"service[0] "dns": backends is missing"#, "add backends = "),
            (set("backends", "[]"), r#"service[0] "dns": backends = []"#, "at least one entry"),
            (set("backends", r#""10.0.0.2:53""#), "TOML parse error at line 8", "invalid type: string"),
            (set("backends", r#"["10.0.0:53"]"#), r#"service[0] "dns": backends[0] = "10.0.0:53""#, "not an IPv4 address; use IPV4:PORT"),
            (set("backends", r#"["*:53"]"#), r#"service[0] "dns": backends[0] = "*:53""#, "`*` is not allowed for a backend"),
            (set("backends", r#"["10.0.0.2:53", "10.0.0.3:53", "10.0.0.1:0"]"#), r#"service[0] "dns": backends[2] = "10.0.0.1:0""#, "port 0 is not allowed"),
            (set("backends", r#"["0.0.0.0:53"]"#), r#"service[0] "dns": backends[0] = "0.0.0.0:53""#, "unspecified"),
            (set("backends", r#"["224.0.0.1:53"]"#), r#"service[0] "dns": backends[0] = "224.0.0.1:53""#, "multicast"),
            (set("backends", r#"["255.255.255.255:53"]"#), r#"service[0] "dns": backends[0] = "255.255.255.255:53""#, "broadcast"),
            (set("backends", r#"["[::1]:53"]"#), r#"service[0] "dns": backends[0] = "[::1]:53""#, "an IPv6 backend in a service whose listen[0]"),
            (set("backends", r#"["[::]:53"]"#), r#"service[0] "dns": backends[0] = "[::]:53""#, ":: is the unspecified address; a backend needs a unicast host address"),
            (set("backends", r#"["[ff05::1:3]:53"]"#), r#"service[0] "dns": backends[0] = "[ff05::1:3]:53""#, "ff05::1:3 is a multicast address"),
            (set("backends", r#"["[fe80::2]:53"]"#), r#"service[0] "dns": backends[0] = "[fe80::2]:53""#, "fe80::2 is link-local (fe80::/10), which needs a scope id dnsteer does not handle"),
            (set("backends", r#"["[::ffff:10.0.0.2]:53"]"#), r#"service[0] "dns": backends[0] = "[::ffff:10.0.0.2]:53""#, "write the IPv4 address 10.0.0.2 instead"),
            (set("backends", r#"["2001:db8::2:53"]"#), r#"service[0] "dns": backends[0] = "2001:db8::2:53""#, "goes in brackets"),
            (set("backends", r#"["10.0.0.2:53", "10.0.0.2:53"]"#), r#"service[0] "dns": backends[1] = "10.0.0.2:53""#, "the same address as backends[0]; list each backend once"),
            (set("backends", &backends), r#"service[0] "dns": backends = [65 entries]"#, "at most 64 per service"),
            // Weighted backends.
            (set("backends", r#"[{ addr = "10.0.0.2:53", weight = 0 }, { addr = "10.0.0.3:53", weight = 0 }]"#), r#"service[0] "dns": backends = [2 entries]"#, "every backend has weight 0 (draining)"),
            (set("backends", r#"["10.0.0.2:53", { addr = "10.0.0.2:53", weight = 3 }]"#), r#"service[0] "dns": backends[1].addr = "10.0.0.2:53""#, "the same address as backends[0]"),
            (set("backends", r#"[{ addr = "10.0.0.2:53", weight = 0 }, "10.0.0.2:53"]"#), r#"service[0] "dns": backends[1] = "10.0.0.2:53""#, "the same address as backends[0]"),
            (set("backends", r#"["10.0.0.3:53", { addr = "10.0.0.2:53", weight = 101 }]"#), r#"service[0] "dns": backends[1].weight = 101"#, "above the maximum of 100; use an integer from 0 (drain) to 100"),
            (set("backends", r#"[{ addr = "10.0.0.2:53", weight = 4294967297 }]"#), r#"service[0] "dns": backends[0].weight = 4294967297"#, "above the maximum of 100"),
            (set("backends", r#"[{ addr = "10.0.0.2:53", weight = -1 }]"#), r#"service[0] "dns": backends[0].weight = -1"#, "below the minimum of 0; use an integer from 0 (drain) to 100"),
            (set("backends", r#"[{ addr = "10.0.0.2:53", weight = 1.5 }]"#), r#"service[0] "dns": backends[0].weight = 1.5"#, "not an integer; use an integer from 0 (drain) to 100"),
            (set("backends", r#"[{ addr = "10.0.0.2:53", weight = 2.0 }]"#), r#"service[0] "dns": backends[0].weight = 2.0"#, "not an integer"),
            (set("backends", r#"[{ addr = "10.0.0.2:53", weight = "3" }]"#), r#"service[0] "dns": backends[0].weight = "3""#, "a string; write 3 without quotes"),
            (set("backends", r#"[{ addr = "10.0.0.2:53", weight = "heavy" }]"#), r#"service[0] "dns": backends[0].weight = "heavy""#, "not an integer"),
            (set("backends", r#"[{ addr = "10.0.0.2:53", weight = true }]"#), r#"service[0] "dns": backends[0].weight = true"#, "not an integer"),
            (
                set("backends", r#"[{ addr = "10.0.0.2:53", wieght = 3 }]"#),
                r#"service[0] "dns": backends[0] = { addr = "10.0.0.2:53", wieght = 3 }"#,
                "unknown field `wieght`, expected `addr` or `weight`",
            ),
            (set("backends", r#"[{ weight = 3 }]"#), r#"service[0] "dns": backends[0].addr is missing"#, r#"add addr = "ADDR:PORT""#),
            (set("backends", r#"[{}]"#), r#"service[0] "dns": backends[0].addr is missing"#, r#"add addr = "ADDR:PORT""#),
            (set("backends", r#"[{ addr = 53 }]"#), r#"service[0] "dns": backends[0].addr = 53"#, r#"expected a quoted IPV4:PORT or [IPV6]:PORT, e.g. "10.0.0.2:53""#),
            (set("backends", r#"[{ addr = "10.0.0.2" }]"#), r#"service[0] "dns": backends[0].addr = "10.0.0.2""#, "expected IPV4:PORT"),
            (set("backends", r#"[{ addr = "*:53", weight = 2 }]"#), r#"service[0] "dns": backends[0].addr = "*:53""#, "`*` is not allowed"),
            (set("backends", r#"["10.0.0.2:53=3"]"#), r#"service[0] "dns": backends[0] = "10.0.0.2:53=3""#, r#"write a weighted backend as { addr = "10.0.0.2:53", weight = 3 }"#),
            (set("backends", r#"["10.0.0.2:53=x"]"#), r#"service[0] "dns": backends[0] = "10.0.0.2:53=x""#, "write a weighted backend as a table, e.g. { addr ="),
            (set("backends", "[53]"), r#"service[0] "dns": backends[0] = 53"#, r#"expected "ADDR:PORT" or { addr = "ADDR:PORT", weight = N }"#),
            (set("backends", r#"[["10.0.0.2:53"]]"#), r#"service[0] "dns": backends[0] = ["10.0.0.2:53"]"#, r#"expected "ADDR:PORT" or"#),
            // [limits]
            (format!("{BASE}[limits]\nservices = 0\n"), "limits.services = 0", "below the minimum of 1; use an integer from 1 to 16384"),
            (format!("{BASE}[limits]\nservices = 16385\n"), "limits.services = 16385", "above the maximum of 16384"),
            (format!("{BASE}[limits]\nlisteners = \"8\"\n"), r#"limits.listeners = "8""#, "a string; write 8 without quotes"),
            (format!("{BASE}[limits]\nbackends = 8\n"), "TOML parse error", "unknown field `backends`, expected `services` or `listeners`"),
            (format!("{}[limits]\nservices = 1\n", and_service("b", r#"["192.0.2.12:53"]"#)), "[[service]] = [2 entries]", "at most 1 services fit in the maps; raise [limits] services"),
            (format!("{BASE}[limits]\nlisteners = 1\n").replace(r#"listen = ["192.0.2.10:53"]"#, r#"listen = ["192.0.2.10:53", "192.0.2.11:53"]"#), r#"service[0] "dns": listen[1] = "192.0.2.11:53""#, "at most 1 listen entries over all services fit in the maps"),
            // [service.health]
            (health("interval = \"1s\""), r#"service[0] "dns": health.query is missing"#, r#"e.g. query = "health.example. A""#),
            (health("query = \"health.example. BOGUS\""), r#"service[0] "dns": health.query = "health.example. BOGUS""#, "NAME [TYPE]"),
            (health("query = \"\""), r#"service[0] "dns": health.query = """#, "NAME [TYPE]"),
            (health("query = \"h.example.\"\nintervall = 1"), "TOML parse error at line 11", "unknown field `intervall`"),
            (health("query = \"h.example.\"\ninterval = \"50ms\""), r#"service[0] "dns": health.interval = "50ms""#, r#"below the minimum of 100ms; use a duration from 100ms to 1h, e.g. "1s" or 1"#),
            (health("query = \"h.example.\"\ninterval = \"2h\""), r#"service[0] "dns": health.interval = "2h""#, "above the maximum of 1h"),
            (health("query = \"h.example.\"\ntimeout = \"1ms\""), r#"service[0] "dns": health.timeout = "1ms""#, "below the minimum of 10ms"),
            (health("query = \"h.example.\"\ninterval = \"1s\"\ntimeout = \"2s\""), r#"service[0] "dns": health.timeout = "2s""#, "longer than the interval (1s)"),
            (health("query = \"h.example.\"\nfall = 0"), r#"service[0] "dns": health.fall = 0"#, "below the minimum of 1; use 1 to 100 probes in a row"),
            (health("query = \"h.example.\"\nrise = 101"), r#"service[0] "dns": health.rise = 101"#, "above the maximum of 100"),
            (health("query = \"h.example.\"\nrise = \"2\""), r#"service[0] "dns": health.rise = "2""#, "a string; write 2 without quotes"),
            (health("query = \"h.example.\"\nexpect_rcode = \"FINE\""), r#"service[0] "dns": health.expect_rcode = "FINE""#, "NOERROR"),
            // [flows]
            (flows("sise = 2048"), "TOML parse error at line 10", "unknown field `sise`"),
            (flows("size = 1023"), "flows.size = 1023", "below the minimum of 1024; use an integer from 1024 to 16777216"),
            (flows("size = 0"), "flows.size = 0", "below the minimum of 1024"),
            (flows("size = -1"), "flows.size = -1", "below the minimum of 1024"),
            (flows("size = 16777217"), "flows.size = 16777217", "above the maximum of 16777216; use an integer from 1024 to 16777216"),
            (flows("size = 65536.0"), "flows.size = 65536.0", "not an integer"),
            (flows(r#"size = "64k""#), r#"flows.size = "64k""#, "not an integer"),
            (flows(r#"size = "65536""#), r#"flows.size = "65536""#, "a string; write 65536 without quotes"),
            (flows(r#"udp_idle_timeout = "50ms""#), r#"flows.udp_idle_timeout = "50ms""#, r#"below the minimum of 100ms; use a duration from 100ms to 24h, e.g. "30s" or 30"#),
            (flows("udp_idle_timeout = 0"), "flows.udp_idle_timeout = 0", "below the minimum of 100ms"),
            (flows("udp_idle_timeout = 0.05"), "flows.udp_idle_timeout = 0.05", "below the minimum of 100ms"),
            (flows(r#"udp_idle_timeout = "10d""#), r#"flows.udp_idle_timeout = "10d""#, r#"expected a number and a unit (ms, s, m or h), e.g. "500ms""#),
            (flows(r#"tcp_idle_timeout = "25h""#), r#"flows.tcp_idle_timeout = "25h""#, "above the maximum of 24h"),
            (flows("tcp_idle_timeout = 86401"), "flows.tcp_idle_timeout = 86401", "above the maximum of 24h"),
            (flows("tcp_idle_timeout = 1e300"), "flows.tcp_idle_timeout = 1e300", "above the maximum of 24h"),
            (flows(r#"tcp_idle_timeout = "99999999999999999999h""#), r#"flows.tcp_idle_timeout = "99999999999999999999h""#, "above the maximum of 24h"),
            (flows(r#"tcp_idle_timeout = "18446744073709551615h""#), r#"flows.tcp_idle_timeout = "18446744073709551615h""#, "above the maximum of 24h"),
            (flows(r#"tcp_closing_timeout = "10 s""#), r#"flows.tcp_closing_timeout = "10 s""#, "expected a number and a unit"),
            (flows(r#"tcp_closing_timeout = """#), r#"flows.tcp_closing_timeout = """#, "expected a number and a unit"),
            (flows("tcp_closing_timeout = -5"), "flows.tcp_closing_timeout = -5", "negative; use a duration from 100ms to 24h"),
            (flows("tcp_closing_timeout = -0.5"), "flows.tcp_closing_timeout = -0.5", "negative"),
            (flows("tcp_closing_timeout = nan"), "flows.tcp_closing_timeout = nan", "expected a number and a unit"),
            (flows("tcp_closing_timeout = inf"), "flows.tcp_closing_timeout = inf", "expected a number and a unit"),
            (flows("tcp_closing_timeout = true"), "flows.tcp_closing_timeout = true", r#"expected a number and a unit (ms, s, m or h), e.g. "500ms", "1.5s", "5m" or "1h", or a number of seconds, e.g. 30"#),
        ];
        for (text, head, reason) in cases {
            let message = match parse_str(&text) {
                Ok(config) => panic!("{head}: accepted {config:?}"),
                Err(e) => e.to_string(),
            };
            assert!(
                message.starts_with(&format!("{FILE}: {head}")),
                "{message:?} does not start with {head:?}"
            );
            assert!(message.contains(reason), "{message:?} lacks {reason:?}");
        }
        // The brief's examples, word for word.
        let message = parse_str(&set(
            "backends",
            r#"["10.0.0.2:53", "10.0.0.3:53", "10.0.0.1:0"]"#,
        ))
        .unwrap_err();
        assert_eq!(
            message.to_string(),
            r#"dnsteer.toml: service[0] "dns": backends[2] = "10.0.0.1:0": port 0 is not allowed; use a port from 1 to 65535"#
        );
        let message = parse_str(&set(
            "backends",
            r#"["10.0.0.2:53", { addr = "10.0.0.3:53", weight = 101 }]"#,
        ))
        .unwrap_err();
        assert_eq!(
            message.to_string(),
            r#"dnsteer.toml: service[0] "dns": backends[1].weight = 101: above the maximum of 100; use an integer from 0 (drain) to 100"#
        );
    }

    #[test]
    fn load_reads_the_file() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(EXAMPLE.as_bytes()).unwrap();
        assert_eq!(load(file.path()).unwrap(), parse_str(EXAMPLE).unwrap());
    }

    #[test]
    fn unreadable_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.toml");
        let message = load(&path).unwrap_err().to_string();
        assert!(
            message.starts_with(&format!("{}: ", path.display())),
            "{message}"
        );
        assert!(
            message.contains(&io::Error::from(io::ErrorKind::NotFound).to_string())
                || message.contains("os error 2"),
            "{message}"
        );
    }

    #[test]
    fn check_interface_finds_loopback() {
        assert!(check_interface(Path::new(FILE), "lo").unwrap() > 0);
    }

    #[test]
    fn check_interface_unknown() {
        let message = check_interface(Path::new(FILE), "dnsteer-nx0")
            .unwrap_err()
            .to_string();
        for fragment in [FILE, r#"interface = "dnsteer-nx0""#, "ip link"] {
            assert!(message.contains(fragment), "{message:?} lacks {fragment:?}");
        }
        let message = check_interface(Path::new(FILE), "eth3:1")
            .unwrap_err()
            .to_string();
        assert!(message.contains("address label on eth3"), "{message}");
    }
}

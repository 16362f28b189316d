//! dnsteer's TOML config: parsing and validation.
//!
//! Every error names the file, the field and the value, and says what would be
//! accepted, so a config can be fixed from the message alone.

use std::{
    collections::HashMap,
    ffi::CString,
    fmt, fs,
    hash::Hash,
    io,
    net::{Ipv4Addr, SocketAddrV4},
    path::{Path, PathBuf},
    str::FromStr,
};

use serde::Deserialize;
use xdp_common::{
    MAX_BACKENDS_PER_SERVICE, MAX_LISTENERS, MAX_SERVICES, PROTO_UDP, SERVICE_NAME_LEN,
};

/// A validated config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The interface the program attaches to.
    pub interface: String,
    pub xdp_mode: XdpModeSetting,
    pub services: Vec<Service>,
}

/// A named group of listen entries sharing one backend set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    pub listen: Vec<Listen>,
    pub protocol: Protocol,
    pub select: Select,
    pub backends: Vec<SocketAddrV4>,
}

/// A listen entry: `addr` `None` is `*`, any destination address arriving on the interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Listen {
    pub addr: Option<Ipv4Addr>,
    pub port: u16,
}

/// Defines a fieldless enum spelled in the config by one word per variant, with
/// `as_str`, `Display` and a `FromStr` whose error says what would be accepted.
/// Words after `not_yet` are recognised and rejected as not supported yet.
macro_rules! keyword_enum {
    (
        $(#[$meta:meta])*
        $name:ident { $($(#[$vmeta:meta])* $variant:ident = $word:literal),+ $(,)? }
        $(not_yet [$($later:literal),+])?
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
                    $($($later)|+ => Err(format!("not supported yet; use {}", one_of(Self::WORDS))),)?
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
    /// How a service picks a backend for a packet.
    Select {
        /// Round robin.
        Nth = "nth",
        /// Uniform random draw.
        Random = "random",
    }
}

keyword_enum! {
    /// The transport a service balances.
    Protocol { Udp = "udp" }
    not_yet ["tcp", "udp+tcp"]
}

impl Protocol {
    /// The IP protocol number, as the kernel side matches it.
    pub fn ip_proto(&self) -> u8 {
        match self {
            Protocol::Udp => PROTO_UDP,
        }
    }
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.addr {
            Some(addr) => write!(f, "{addr}:{}", self.port),
            None => write!(f, "*:{}", self.port),
        }
    }
}

const LISTEN_FORM: &str = r#"IPV4:PORT or *:PORT, e.g. "192.0.2.10:53" or "*:53""#;
const BACKEND_FORM: &str = r#"IPV4:PORT, e.g. "10.0.0.2:53""#;

impl FromStr for Listen {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match parse_endpoint(s, LISTEN_FORM)? {
            // The kernel side stores `*` as address 0: one spelling keeps them apart.
            (Some(addr), port) if addr.is_unspecified() => Err(format!(
                r#"0.0.0.0 is not a listen address; write "*:{port}" for any address"#
            )),
            (addr, port) => Ok(Listen { addr, port }),
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

    if raw.service.is_empty() {
        return Err(at.missing(
            "[[service]]",
            "add at least one [[service]] with name, listen and backends",
        ));
    }
    if raw.service.len() > MAX_SERVICES as usize {
        return Err(at.invalid(
            "[[service]]",
            entries(raw.service.len()),
            format!("at most {MAX_SERVICES} services are supported"),
        ));
    }

    let mut services: Vec<Service> = Vec::with_capacity(raw.service.len());
    let mut names = HashMap::new();
    // (listen entry, protocol) -> index of the service that owns it.
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
            if let Some(k) = listeners.insert((*listen, service.protocol), i) {
                let (owner, protocol) = (&services[k].name, service.protocol);
                let reason = format!(
                    "service[{k}] {owner:?} listens on {listen} ({protocol}) already; an address, port and protocol belong to one service"
                );
                return Err(at.invalid(field, value, reason));
            }
            if listeners.len() > MAX_LISTENERS as usize {
                return Err(at.invalid(
                    field,
                    value,
                    format!(
                        "at most {MAX_LISTENERS} listen entries over all services are supported"
                    ),
                ));
            }
        }
        services.push(service);
    }
    Ok(Config {
        interface,
        xdp_mode,
        services,
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

/// The file as written; validation turns it into a `Config`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    interface: Option<String>,
    xdp_mode: Option<String>,
    #[serde(default)]
    service: Vec<RawService>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: Option<String>,
    listen: Option<Vec<String>>,
    protocol: Option<String>,
    select: Option<String>,
    backends: Option<Vec<String>>,
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
        let listen = self.endpoints(
            &at,
            "listen",
            raw.listen,
            MAX_LISTENERS,
            r#"["192.0.2.10:53"] or ["*:53"]"#,
            str::parse,
        )?;
        let protocol = self.keyword(format_args!("{at}: protocol"), raw.protocol, Protocol::Udp)?;
        let select = self.keyword(format_args!("{at}: select"), raw.select, Select::Nth)?;
        let backends = self.endpoints(
            &at,
            "backends",
            raw.backends,
            MAX_BACKENDS_PER_SERVICE,
            r#"["10.0.0.2:53", "10.0.0.3:53"]"#,
            parse_backend,
        )?;
        Ok(Service {
            name,
            listen,
            protocol,
            select,
            backends,
        })
    }

    /// A list of endpoints in service `at`: present, 1 to `max` entries, each valid and listed once.
    fn endpoints<T: Eq + Hash + Copy>(
        self,
        at: &str,
        key: &str,
        list: Option<Vec<String>>,
        max: u32,
        example: &str,
        parse: impl Fn(&str) -> Result<T, String>,
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
        let mut seen = HashMap::new();
        let field = |j| format!("{at}: {key}[{j}]");
        list.iter()
            .enumerate()
            .map(|(j, entry)| {
                let value =
                    parse(entry).map_err(|reason| self.invalid(field(j), quoted(entry), reason))?;
                match seen.insert(value, j) {
                    Some(first) => Err(self.invalid(
                        field(j),
                        quoted(entry),
                        format!("the same as {key}[{first}]; list each entry once"),
                    )),
                    None => Ok(value),
                }
            })
            .collect()
    }
}

/// Parses `IPV4:PORT`, or `*:PORT` (address `None`); `form` says what the caller accepts.
fn parse_endpoint(s: &str, form: &str) -> Result<(Option<Ipv4Addr>, u16), String> {
    if s.starts_with('[') || s.matches(':').count() > 1 {
        return Err(format!("IPv6 is not supported yet; use {form}"));
    }
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("expected {form}"))?;
    let addr = match host {
        "*" => None,
        _ => Some(
            host.parse()
                .map_err(|_| format!("{host:?} is not an IPv4 address; use {form}"))?,
        ),
    };
    match port.parse::<u16>() {
        Ok(0) => Err("port 0 is not allowed; use a port from 1 to 65535".to_owned()),
        Ok(port) => Ok((addr, port)),
        Err(_) => Err(format!(
            "{port:?} is not a port; use a port from 1 to 65535"
        )),
    }
}

/// A backend: a concrete unicast `IPV4:PORT` to rewrite packets towards.
fn parse_backend(s: &str) -> Result<SocketAddrV4, String> {
    let (addr, port) = parse_endpoint(s, BACKEND_FORM)?;
    let addr =
        addr.ok_or_else(|| format!("`*` is not allowed for a backend; use {BACKEND_FORM}"))?;
    let what = if addr.is_unspecified() {
        "the unspecified address"
    } else if addr.is_multicast() {
        "a multicast address"
    } else if addr.is_broadcast() {
        "the broadcast address"
    } else {
        return Ok(SocketAddrV4::new(addr, port));
    };
    Err(format!(
        "{addr} is {what}; a backend needs a unicast host address"
    ))
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

    /// A TOML array of strings.
    fn array(entries: impl Iterator<Item = String>) -> String {
        let quoted: Vec<String> = entries.map(|e| format!("{e:?}")).collect();
        format!("[{}]", quoted.join(", "))
    }

    #[test]
    fn example_parses() {
        let backends = (2..=5)
            .map(|h| SocketAddrV4::new(Ipv4Addr::new(10, 100, 13, h), 53))
            .collect();
        let expected = Config {
            interface: "eth3".to_owned(),
            xdp_mode: XdpModeSetting::Auto,
            services: vec![Service {
                name: "dns".to_owned(),
                listen: vec![
                    Listen {
                        addr: Some(Ipv4Addr::new(192, 0, 2, 10)),
                        port: 53,
                    },
                    Listen {
                        addr: Some(Ipv4Addr::new(192, 0, 2, 11)),
                        port: 53,
                    },
                ],
                protocol: Protocol::Udp,
                select: Select::Nth,
                backends,
            }],
        };
        assert_eq!(parse_str(EXAMPLE).unwrap(), expected);
    }

    #[test]
    fn defaults_and_wildcard() {
        let text = "interface = \"eth3\"\n[[service]]\nname = \"dns\"\nlisten = [\"*:53\"]\nbackends = [\"10.0.0.2:53\"]\n";
        let config = parse_str(text).unwrap();
        assert_eq!(config.xdp_mode, XdpModeSetting::Auto);
        let service = &config.services[0];
        assert_eq!(
            service.listen,
            [Listen {
                addr: None,
                port: 53
            }]
        );
        assert_eq!(service.listen[0].to_string(), "*:53");
        assert_eq!(
            (service.protocol, service.select),
            (Protocol::Udp, Select::Nth)
        );
        assert_eq!(service.protocol.ip_proto(), PROTO_UDP);
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
        assert_eq!("udp".parse::<Protocol>(), Ok(Protocol::Udp));
        // The CLI's --xdp-mode shares the config's wording.
        assert_eq!(
            "fast".parse::<XdpModeSetting>().unwrap_err(),
            r#"expected "auto", "driver" or "skb""#
        );
        let listen = Listen {
            addr: Some(Ipv4Addr::new(192, 0, 2, 10)),
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
            (set("protocol", r#""tcp""#), r#"service[0] "dns": protocol = "tcp""#, r#"not supported yet; use "udp""#),
            (set("protocol", r#""udp+tcp""#), r#"service[0] "dns": protocol = "udp+tcp""#, "not supported yet"),
            (set("protocol", r#""sctp""#), r#"service[0] "dns": protocol = "sctp""#, r#"expected "udp""#),
            ("interface = \"eth3\"\n".into(), "[[service]] is missing", "add at least one [[service]]"),
            (services, "[[service]] = [257 entries]", "at most 256 services"),
            (BASE.replace("name = \"dns\"", ""), "service[0].name is missing", "add name = "),
            (set("name", r#""""#), r#"service[0].name = """#, "needs a name"),
            (set("name", &format!("{long_name:?}")), &long_name_head, "32 bytes long; at most 31"),
            (and_service("dns", r#"["*:54"]"#), r#"service[1].name = "dns""#, "service[0] has this name"),
            (BASE.replace("listen = [\"192.0.2.10:53\"]", ""), r#"service[0] "dns": listen is missing"#, "add listen = "),
            (set("listen", "[]"), r#"service[0] "dns": listen = []"#, "at least one entry"),
            (set("listen", r#"["192.0.2.10"]"#), r#"service[0] "dns": listen[0] = "192.0.2.10""#, "expected IPV4:PORT or *:PORT"),
            (set("listen", r#"["192.0.2.300:53"]"#), r#"service[0] "dns": listen[0] = "192.0.2.300:53""#, "not an IPv4 address"),
            (set("listen", r#"["ns1.example:53"]"#), r#"service[0] "dns": listen[0] = "ns1.example:53""#, "not an IPv4 address"),
            (set("listen", r#"["[2001:db8::1]:53"]"#), r#"service[0] "dns": listen[0] = "[2001:db8::1]:53""#, "IPv6 is not supported yet"),
            (set("listen", r#"["2001:db8::1"]"#), r#"service[0] "dns": listen[0] = "2001:db8::1""#, "IPv6 is not supported yet"),
            (set("listen", r#"["*:0"]"#), r#"service[0] "dns": listen[0] = "*:0""#, "port 0 is not allowed; use a port from 1 to 65535"),
            (set("listen", r#"["*:65536"]"#), r#"service[0] "dns": listen[0] = "*:65536""#, r#""65536" is not a port"#),
            (set("listen", r#"["0.0.0.0:53"]"#), r#"service[0] "dns": listen[0] = "0.0.0.0:53""#, r#"write "*:53""#),
            (set("listen", r#"["*:53", "192.0.2.10:53", "*:53"]"#), r#"service[0] "dns": listen[2] = "*:53""#, "the same as listen[0]"),
            (
                and_service("b", r#"["*:54", "192.0.2.10:53"]"#),
                r#"service[1] "b": listen[1] = "192.0.2.10:53""#,
                r#"service[0] "dns" listens on 192.0.2.10:53 (udp) already"#,
            ),
            (and_service("b", &listeners), r#"service[1] "b": listen[1023] = "192.0.2.11:1024""#, "at most 1024 listen entries"),
            (BASE.replace("backends = [\"10.0.0.2:53\"]", ""), r#"service[0] "dns": backends is missing"#, "add backends = "),
            (set("backends", "[]"), r#"service[0] "dns": backends = []"#, "at least one entry"),
            (set("backends", r#"["10.0.0:53"]"#), r#"service[0] "dns": backends[0] = "10.0.0:53""#, "not an IPv4 address; use IPV4:PORT"),
            (set("backends", r#"["*:53"]"#), r#"service[0] "dns": backends[0] = "*:53""#, "`*` is not allowed for a backend"),
            (set("backends", r#"["10.0.0.2:53", "10.0.0.3:53", "10.0.0.1:0"]"#), r#"service[0] "dns": backends[2] = "10.0.0.1:0""#, "port 0 is not allowed"),
            (set("backends", r#"["0.0.0.0:53"]"#), r#"service[0] "dns": backends[0] = "0.0.0.0:53""#, "unspecified"),
            (set("backends", r#"["224.0.0.1:53"]"#), r#"service[0] "dns": backends[0] = "224.0.0.1:53""#, "multicast"),
            (set("backends", r#"["255.255.255.255:53"]"#), r#"service[0] "dns": backends[0] = "255.255.255.255:53""#, "broadcast"),
            (set("backends", r#"["[::1]:53"]"#), r#"service[0] "dns": backends[0] = "[::1]:53""#, "IPv6 is not supported yet"),
            (set("backends", r#"["10.0.0.2:53", "10.0.0.2:53"]"#), r#"service[0] "dns": backends[1] = "10.0.0.2:53""#, "the same as backends[0]"),
            (set("backends", &backends), r#"service[0] "dns": backends = [65 entries]"#, "at most 64 per service"),
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
        // The brief's example, word for word.
        let message = parse_str(&set(
            "backends",
            r#"["10.0.0.2:53", "10.0.0.3:53", "10.0.0.1:0"]"#,
        ))
        .unwrap_err();
        assert_eq!(
            message.to_string(),
            r#"dnsteer.toml: service[0] "dns": backends[2] = "10.0.0.1:0": port 0 is not allowed; use a port from 1 to 65535"#
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

//! From the TOML as written to a validated [`Config`]: every check names the
//! file, the field and the value.

use std::{collections::HashMap, fmt, net::IpAddr, path::Path, str::FromStr, time::Duration};

use serde::Deserialize;
use xdp_common::{MAX_BACKENDS_PER_SERVICE, PROTO_TCP, PROTO_UDP, SERVICE_NAME_LEN};

use super::{
    AUTO_INTERFACE, BackendSpec, Config, ConfigError, DEFAULT_WEIGHT, Family, FlowSettings,
    Forward, HealthCheck, Limits, Listen, MAX_FLOW_SIZE, MAX_FLOW_TIMEOUT, MAX_HEALTH_COUNT,
    MAX_HEALTH_INTERVAL, MAX_LIMIT_LISTENERS, MAX_LIMIT_SERVICES, MAX_QUERY_TIMEOUT, MIN_FLOW_SIZE,
    MIN_FLOW_TIMEOUT, MIN_HEALTH_INTERVAL, MIN_HEALTH_TIMEOUT, PassiveCheck, ProbeQuery, Protocol,
    Rcode, Select, Service, SocketCgroup, XdpModeSetting, human, parse_backend_addr,
    values::{
        BACKEND_ENTRY_FORM, BACKEND_FORM, DURATION_FORM, duration_or_overflow, entries, quoted,
        size_range, table_hint, toml_integer, toml_weight, written,
    },
};

pub(super) mod kubernetes;

/// Parses and validates `text`; `origin` only names the file in messages.
pub fn parse(text: &str, origin: &Path) -> Result<Config, ConfigError> {
    parse_with(text, origin, None)
}

/// `parse`, with `iface` (from `--iface` or `DNSTEER_IFACE`) standing in for
/// the file's `interface`, which it may then leave out.
pub fn parse_with(text: &str, origin: &Path, iface: Option<&str>) -> Result<Config, ConfigError> {
    let at = Origin(origin);
    let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax {
        path: origin.to_path_buf(),
        message: e.to_string().trim_end().to_owned(),
    })?;

    let interface = match iface {
        Some(iface) => {
            let iface = iface.to_owned();
            if iface != AUTO_INTERFACE {
                Origin(Path::new("--iface")).interface_name(&iface)?;
            }
            iface
        }
        None => at.required(
            "interface",
            raw.interface,
            r#"set interface = "eth0" to the interface the listen addresses arrive on (see `ip link`), interface = "auto" for the one holding a listen address or the default route, or give --iface / DNSTEER_IFACE"#,
        )?,
    };
    if interface != AUTO_INTERFACE {
        at.interface_name(&interface)?;
    }
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
        sockets: at.keyword(
            "sockets.cgroup",
            raw.sockets.and_then(|s| s.cgroup),
            SocketCgroup::Off,
        )?,
    })
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
    sockets: Option<RawSockets>,
}

/// `[sockets]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSockets {
    cgroup: Option<String>,
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
    kubernetes: Option<kubernetes::RawKubernetes>,
    passive: Option<RawPassive>,
}

/// `[service.passive]`; values are checked by hand to name the field.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPassive {
    max_timeout_ratio: Option<toml::Value>,
    max_servfail_ratio: Option<toml::Value>,
    window: Option<toml::Value>,
    min_queries: Option<toml::Value>,
    eject_for: Option<toml::Value>,
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
pub(super) struct Origin<'a>(pub(super) &'a Path);

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
    pub(super) fn interface_name(self, name: &str) -> Result<(), ConfigError> {
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
        let kubernetes = match raw.kubernetes {
            Some(raw) => Some(self.kubernetes(&at, raw)?),
            None => None,
        };
        // Left to the Service's external and load-balancer addresses.
        let listen = match (&kubernetes, raw.listen) {
            (Some(_), None) => Vec::new(),
            (_, listen) => self.listen(&at, listen)?,
        };
        let protocol = self.keyword(format_args!("{at}: protocol"), raw.protocol, Protocol::Udp)?;
        let select = self.keyword(format_args!("{at}: select"), raw.select, Select::Nth)?;
        let backends = match (&kubernetes, raw.backends) {
            (Some(k), Some(list)) => {
                return Err(self.invalid(
                    format_args!("{at}: backends"),
                    entries(list.len()),
                    format!(
                        "this service takes its backends from kubernetes = {{ ... }} (Service {k}); keep either backends or kubernetes"
                    ),
                ));
            }
            (Some(_), None) => Vec::new(),
            (None, None) => {
                return Err(self.missing(
                    format_args!("{at}: backends"),
                    r#"add backends = ["10.0.0.2:53", { addr = "10.0.0.3:53", weight = 3 }], or take them from a Kubernetes Service with kubernetes = { namespace = "dns", service = "bind", port = "dns" }"#,
                ));
            }
            (None, list) => self.backends(&at, list)?,
        };
        self.one_family(&at, &listen, &backends)?;
        if let Some(k) = &kubernetes {
            self.kubernetes_family(&at, k, &listen)?;
        }
        let listen = listen.into_iter().map(|(l, _)| l).collect();
        let backends = backends.into_iter().map(|(b, _, _)| b).collect();
        let health = match raw.health {
            Some(raw) => Some(self.health(&at, raw)?),
            None => None,
        };
        let passive = match raw.passive {
            Some(raw) => Some(self.passive(&at, raw)?),
            None => None,
        };
        Ok(Service {
            name,
            listen,
            protocol,
            select,
            backends,
            health,
            kubernetes,
            passive,
        })
    }

    /// `[service.passive]` of service `at`.
    fn passive(self, at: &str, raw: RawPassive) -> Result<PassiveCheck, ConfigError> {
        let field = |key: &str| format!("{at}: passive.{key}");
        let ratio = |key: &str, value: Option<toml::Value>| -> Result<Option<f64>, ConfigError> {
            let Some(value) = value else {
                return Ok(None);
            };
            let n = match &value {
                toml::Value::Float(f) => *f,
                toml::Value::Integer(i) => *i as f64,
                _ => f64::NAN,
            };
            if !(n > 0.0 && n <= 1.0) {
                return Err(self.invalid(
                    field(key),
                    written(&value),
                    "use a share above 0 and at most 1, e.g. 0.2 for 20%".to_owned(),
                ));
            }
            Ok(Some(n))
        };
        let max_timeout_ratio = ratio("max_timeout_ratio", raw.max_timeout_ratio)?;
        let max_servfail_ratio = ratio("max_servfail_ratio", raw.max_servfail_ratio)?;
        if max_timeout_ratio.is_none() && max_servfail_ratio.is_none() {
            return Err(self.missing(
                format!("{at}: passive.max_timeout_ratio or passive.max_servfail_ratio"),
                "set one or both, e.g. max_servfail_ratio = 0.5 to eject a backend whose answers are more than half SERVFAIL",
            ));
        }
        let bounds = (Duration::from_secs(1), MAX_HEALTH_INTERVAL);
        let window = self.duration(
            &field("window"),
            raw.window,
            PassiveCheck::DEFAULT_WINDOW,
            bounds,
        )?;
        let eject_for = self.duration(
            &field("eject_for"),
            raw.eject_for,
            PassiveCheck::DEFAULT_EJECT_FOR,
            bounds,
        )?;
        let min_queries = match raw.min_queries {
            None => PassiveCheck::DEFAULT_MIN_QUERIES,
            Some(v) => u64::from(
                toml_integer(&v, 1, 1_000_000, "use 1 to 1000000 queries")
                    .map_err(|reason| self.invalid(field("min_queries"), written(&v), reason))?,
            ),
        };
        Ok(PassiveCheck {
            max_timeout_ratio,
            max_servfail_ratio,
            window,
            min_queries,
            eject_for,
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

/// The config's word for an IP protocol number `Protocol::ip_protos` returns.
fn ip_proto_word(proto: u8) -> &'static str {
    match proto {
        PROTO_UDP => "udp",
        PROTO_TCP => "tcp",
        _ => unreachable!("ip_protos returns udp and tcp only, not {proto}"),
    }
}

//! `kubernetes = { namespace = "dns", service = "bind", port = "dns" }` in a
//! `[[service]]`: its backends (and, without `listen`, its listen addresses)
//! come from a Kubernetes Service instead of `backends`.

use std::{fmt, str::FromStr};

use serde::Deserialize;

use super::Origin;
use crate::config::{
    ConfigError, Family, Listen,
    values::{quoted, written},
};

/// Where a service's backends come from when Kubernetes feeds it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KubernetesSource {
    pub namespace: String,
    /// The Kubernetes Service's name.
    pub service: String,
    pub port: PortRef,
    /// The family of endpoints to take when `listen` does not say (it is
    /// left to the Service); IPv4 unless `family = "ipv6"`.
    pub family: Option<Family>,
}

impl fmt::Display for KubernetesSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{} port {}", self.namespace, self.service, self.port)
    }
}

/// A Service port, by name (as EndpointSlices name it) or by number.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PortRef {
    Name(String),
    Number(u16),
}

impl fmt::Display for PortRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortRef::Name(name) => write!(f, "{name:?}"),
            PortRef::Number(n) => write!(f, "{n}"),
        }
    }
}

impl FromStr for PortRef {
    type Err = String;

    /// A number 1-65535, or a name as Kubernetes allows one for a port
    /// (an IANA_SVC_NAME: 1-15 lowercase letters, digits and inner dashes,
    /// at least one letter).
    fn from_str(s: &str) -> Result<Self, String> {
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            return match s.parse::<u16>() {
                Ok(n) if n > 0 => Ok(PortRef::Number(n)),
                _ => Err("expected a port number 1-65535 or a port name".to_owned()),
            };
        }
        let ok = (1..=15).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && s.bytes().any(|b| b.is_ascii_lowercase())
            && !s.starts_with('-')
            && !s.ends_with('-')
            && !s.contains("--");
        if ok {
            Ok(PortRef::Name(s.to_owned()))
        } else {
            Err("expected a port number 1-65535 or a Kubernetes port name (1-15 lowercase letters, digits and single dashes, as in the Service's ports[].name)".to_owned())
        }
    }
}

/// The inline table as written; values are checked by hand to name the field.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKubernetes {
    namespace: Option<String>,
    service: Option<String>,
    port: Option<toml::Value>,
    family: Option<String>,
}

/// A DNS-1123 label (a namespace, a Service name): 1-63 lowercase letters,
/// digits and inner dashes.
fn dns_label(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

impl Origin<'_> {
    /// `kubernetes = { ... }` of service `at`.
    pub(super) fn kubernetes(
        self,
        at: &str,
        raw: RawKubernetes,
    ) -> Result<KubernetesSource, ConfigError> {
        let field = |key: &str| format!("{at}: kubernetes.{key}");
        let label = |key: &str, value: Option<String>, example: &str| {
            let value = self.required(
                field(key),
                value,
                format_args!("add {key} = {example:?} to kubernetes = {{ ... }}"),
            )?;
            if dns_label(&value) {
                Ok(value)
            } else {
                Err(self.invalid(
                    field(key),
                    quoted(&value),
                    "not a Kubernetes name: 1-63 lowercase letters, digits and dashes, starting and ending with a letter or digit",
                ))
            }
        };
        let namespace = label("namespace", raw.namespace, "dns")?;
        let service = label("service", raw.service, "bind")?;
        let port = self.required(
            field("port"),
            raw.port,
            r#"name the Service's port, e.g. port = "dns", or give its number, port = 53"#,
        )?;
        let port = match &port {
            toml::Value::String(s) => s.parse::<PortRef>(),
            toml::Value::Integer(n) => n.to_string().parse::<PortRef>(),
            _ => Err("expected a port name (a string) or a number".to_owned()),
        }
        .map_err(|reason| self.invalid(field("port"), written(&port), reason))?;
        let family = match raw.family.as_deref() {
            None => None,
            Some("ipv4") => Some(Family::Ipv4),
            Some("ipv6") => Some(Family::Ipv6),
            Some(other) => {
                return Err(self.invalid(
                    field("family"),
                    quoted(other),
                    r#"expected "ipv4" or "ipv6""#,
                ));
            }
        };
        Ok(KubernetesSource {
            namespace,
            service,
            port,
            family,
        })
    }
}

impl Origin<'_> {
    /// The table's `family` agrees with `listen`, when both are there.
    pub(super) fn kubernetes_family(
        self,
        at: &str,
        source: &KubernetesSource,
        listen: &[(Listen, String)],
    ) -> Result<(), ConfigError> {
        if let (Some((first, value)), Some(family)) = (listen.first(), source.family)
            && family != Family::of(first.addr)
        {
            return Err(self.invalid(
                format_args!("{at}: kubernetes.family"),
                quoted(if family == Family::Ipv4 { "ipv4" } else { "ipv6" }),
                format!(
                    "listen[0] {value} is {}; a service is one family, and its endpoints are taken of the family of its listen addresses (leave family out)",
                    Family::of(first.addr)
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::parse;

    const BASE: &str = r#"interface = "eth3"
[[service]]
name = "dns"
listen = ["192.0.2.10:53"]
"#;

    fn with(lines: &str) -> Result<crate::config::Config, String> {
        parse(&format!("{BASE}{lines}\n"), Path::new("dnsteer.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn port_refs() {
        assert_eq!("dns".parse(), Ok(PortRef::Name("dns".into())));
        assert_eq!("dns-tcp".parse(), Ok(PortRef::Name("dns-tcp".into())));
        assert_eq!("53".parse(), Ok(PortRef::Number(53)));
        for bad in [
            "",
            "0",
            "65536",
            "DNS",
            "-dns",
            "dns-",
            "d--ns",
            "a-very-long-port-name",
            "dns_tcp",
            "123-",
        ] {
            let parsed = bad.parse::<PortRef>();
            assert!(parsed.is_err(), "{bad:?} parsed as {parsed:?}");
        }
    }

    #[test]
    fn a_kubernetes_source_instead_of_backends() {
        let config =
            with(r#"kubernetes = { namespace = "dns", service = "bind", port = "dns" }"#).unwrap();
        let service = &config.services[0];
        assert!(service.backends.is_empty());
        assert_eq!(
            service.kubernetes,
            Some(KubernetesSource {
                namespace: "dns".into(),
                service: "bind".into(),
                port: PortRef::Name("dns".into()),
                family: None,
            })
        );
        assert_eq!(service.family(), Family::Ipv4);
        let numbered =
            with(r#"kubernetes = { namespace = "dns", service = "bind", port = 5353 }"#).unwrap();
        assert_eq!(
            numbered.services[0].kubernetes.as_ref().unwrap().port,
            PortRef::Number(5353)
        );
        // Without listen: the Service's addresses; the family as said, IPv4 by default.
        let text = r#"interface = "eth3"
[[service]]
name = "dns"
kubernetes = { namespace = "dns", service = "bind", port = "dns", family = "ipv6" }
"#;
        let config = parse(text, Path::new("dnsteer.toml")).unwrap();
        assert!(config.services[0].listen.is_empty());
        assert_eq!(config.services[0].family(), Family::Ipv6);
    }

    /// Each mistake, and the message naming file, field and value.
    #[test]
    fn errors() {
        let table = [
            (
                r#"backends = ["10.0.0.2:53"]
kubernetes = { namespace = "dns", service = "bind", port = "dns" }"#,
                r#"dnsteer.toml: service[0] "dns": backends = [1 entries]: this service takes its backends from kubernetes = { ... } (Service dns/bind port "dns"); keep either backends or kubernetes"#,
            ),
            (
                r#"kubernetes = { service = "bind", port = "dns" }"#,
                r#"dnsteer.toml: service[0] "dns": kubernetes.namespace is missing; add namespace = "dns" to kubernetes = { ... }"#,
            ),
            (
                r#"kubernetes = { namespace = "DNS", service = "bind", port = "dns" }"#,
                r#"dnsteer.toml: service[0] "dns": kubernetes.namespace = "DNS": not a Kubernetes name: 1-63 lowercase letters, digits and dashes, starting and ending with a letter or digit"#,
            ),
            (
                r#"kubernetes = { namespace = "dns", service = "bind-", port = "dns" }"#,
                r#"dnsteer.toml: service[0] "dns": kubernetes.service = "bind-": not a Kubernetes name: 1-63 lowercase letters, digits and dashes, starting and ending with a letter or digit"#,
            ),
            (
                r#"kubernetes = { namespace = "dns", service = "bind" }"#,
                r#"dnsteer.toml: service[0] "dns": kubernetes.port is missing; name the Service's port, e.g. port = "dns", or give its number, port = 53"#,
            ),
            (
                r#"kubernetes = { namespace = "dns", service = "bind", port = 0 }"#,
                r#"dnsteer.toml: service[0] "dns": kubernetes.port = 0: expected a port number 1-65535 or a port name"#,
            ),
            (
                r#"kubernetes = { namespace = "dns", service = "bind", port = "DNS" }"#,
                r#"dnsteer.toml: service[0] "dns": kubernetes.port = "DNS": expected a port number 1-65535 or a Kubernetes port name (1-15 lowercase letters, digits and single dashes, as in the Service's ports[].name)"#,
            ),
            (
                r#"kubernetes = { namespace = "dns", service = "bind", port = "dns", family = "ipv5" }"#,
                r#"dnsteer.toml: service[0] "dns": kubernetes.family = "ipv5": expected "ipv4" or "ipv6""#,
            ),
            (
                r#"kubernetes = { namespace = "dns", service = "bind", port = "dns", family = "ipv6" }"#,
                r#"dnsteer.toml: service[0] "dns": kubernetes.family = "ipv6": listen[0] "192.0.2.10:53" is IPv4; a service is one family, and its endpoints are taken of the family of its listen addresses (leave family out)"#,
            ),
            (
                "",
                r#"dnsteer.toml: service[0] "dns": backends is missing; add backends = ["10.0.0.2:53", { addr = "10.0.0.3:53", weight = 3 }], or take them from a Kubernetes Service with kubernetes = { namespace = "dns", service = "bind", port = "dns" }"#,
            ),
        ];
        for (lines, want) in table {
            assert_eq!(with(lines).map(|_| ()), Err(want.to_owned()), "for {lines}");
        }
        // An unknown key in the table is named by the TOML parser.
        let err = with(
            r#"kubernetes = { namespace = "dns", service = "bind", port = "dns", label = "x" }"#,
        )
        .unwrap_err();
        assert!(err.contains("unknown field `label`"), "{err}");
        // listen may be left out only with kubernetes.
        let err = parse(
            "interface = \"eth3\"\n[[service]]\nname = \"dns\"\nbackends = [\"10.0.0.2:53\"]\n",
            Path::new("dnsteer.toml"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("listen is missing"), "{err}");
    }
}

//! How single values are spelled: listen entries, backends, weights and
//! durations, and how a value is shown back in a message.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    str::FromStr,
    time::Duration,
};

use super::{BackendSpec, DEFAULT_WEIGHT, Listen, MAX_FLOW_SIZE, MAX_WEIGHT, MIN_FLOW_SIZE};

pub(super) const LISTEN_FORM: &str = r#"IPV4:PORT, [IPV6]:PORT, *:PORT (any IPv4 address) or [::]:PORT (any IPv6 address), e.g. "192.0.2.10:53", "[2001:db8::10]:53" or "*:53""#;
pub(super) const BACKEND_FORM: &str =
    r#"IPV4:PORT or [IPV6]:PORT, e.g. "10.0.0.2:53" or "[2001:db8::2]:53""#;
pub(super) const BACKEND_SPEC_FORM: &str = r#"IPV4:PORT or [IPV6]:PORT, optionally followed by =WEIGHT, e.g. "10.0.0.2:53=3" or "[2001:db8::2]:53=3""#;
pub(super) const BACKEND_ENTRY_FORM: &str = r#""ADDR:PORT" or { addr = "ADDR:PORT", weight = N }, ADDR an IPv4 address or a bracketed IPv6 one, e.g. { addr = "10.0.0.2:53", weight = 3 }"#;
pub(super) const DURATION_FORM: &str =
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

/// Parses a duration: a decimal number and a unit, `ms`, `s`, `m` or `h`
/// (`"500ms"`, `"1.5s"`, `"5m"`, `"1h"`), or a bare number of seconds (`"30"`).
/// Exact to the nanosecond, below which it truncates; callers check the range.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    duration_or_overflow(s)?
        .ok_or_else(|| "too long; a duration is at most 2^64 - 1 seconds".to_owned())
}

/// `parse_duration`, with `None` for a well-formed duration too long for `Duration`,
/// so a caller with a range can say its maximum instead.
pub(super) fn duration_or_overflow(s: &str) -> Result<Option<Duration>, String> {
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

/// Parses `IPV4:PORT`, `[IPV6]:PORT`, or `*:PORT` (address `None`); `form` says
/// what the caller accepts.
pub(super) fn parse_endpoint(s: &str, form: &str) -> Result<(Option<IpAddr>, u16), String> {
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
pub(super) fn backend_addr(s: &str, form: &str) -> Result<SocketAddr, String> {
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
pub(super) fn ipv6_problem(addr: Ipv6Addr) -> Option<String> {
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
pub(super) fn table_hint(s: &str) -> Option<String> {
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
pub(super) fn weight_range() -> String {
    format!("use an integer from 0 (drain) to {MAX_WEIGHT}")
}

/// What `[flows] size` may be, for messages.
pub(super) fn size_range() -> String {
    format!("use an integer from {MIN_FLOW_SIZE} to {MAX_FLOW_SIZE}")
}

/// A weight as the command line writes it.
pub(super) fn parse_weight(s: &str) -> Result<u32, String> {
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
pub(super) fn toml_weight(value: &toml::Value) -> Result<u32, String> {
    toml_integer(value, 0, MAX_WEIGHT, &weight_range())
}

/// An integer from `min` to `max` as TOML holds it; `accepted` says so in messages.
pub(super) fn toml_integer(
    value: &toml::Value,
    min: u32,
    max: u32,
    accepted: &str,
) -> Result<u32, String> {
    match value {
        toml::Value::Integer(n) => bounded(*n, min, max, accepted),
        toml::Value::String(s) if s.parse::<i64>().is_ok() => {
            Err(format!("a string; write {s} without quotes"))
        }
        _ => Err(format!("not an integer; {accepted}")),
    }
}

/// `n` if it is from `min` to `max`; `accepted` says what is, for messages.
pub(super) fn bounded(n: i64, min: u32, max: u32, accepted: &str) -> Result<u32, String> {
    match u32::try_from(n) {
        Ok(v) if (min..=max).contains(&v) => Ok(v),
        _ if n < i64::from(min) => Err(format!("below the minimum of {min}; {accepted}")),
        _ => Err(format!("above the maximum of {max}; {accepted}")),
    }
}

/// `"a"`, `"a" or "b"`, `"a", "b" or "c"`.
pub(super) fn one_of(words: &[&str]) -> String {
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
pub(super) fn quoted(s: &str) -> String {
    format!("{s:?}")
}

/// A value as written in TOML; a float keeps its exponent, as `1e300`.
pub(super) fn written(value: &toml::Value) -> String {
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
pub(super) fn entries(n: usize) -> String {
    match n {
        0 => "[]".to_owned(),
        _ => format!("[{n} entries]"),
    }
}

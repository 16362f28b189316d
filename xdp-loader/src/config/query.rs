//! The two values of `[service.health]` that speak DNS: the question a probe
//! asks (`query`) and the response code it expects (`expect_rcode`).

use std::{fmt, str::FromStr};

use hickory_proto::{
    op::ResponseCode,
    rr::{Name, RecordType},
};

/// What [`ProbeQuery`] parse errors say is accepted.
const QUERY_FORM: &str = r#"expected "NAME [TYPE]", e.g. "health.example. A""#;
const TYPE_FORM: &str =
    r#"expected "NAME [TYPE]" with a data TYPE such as A, AAAA, TXT, SOA or NS"#;
const NAME_FORM: &str = r#"expected "NAME [TYPE]" with a host NAME such as "health.example.""#;

/// The question a probe asks: `"health.example. A"`; the type defaults to A when omitted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeQuery {
    /// Always fully qualified, whether or not it was written with the trailing dot.
    pub name: Name,
    pub rtype: RecordType,
}

impl FromStr for ProbeQuery {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let words: Vec<&str> = s.split_whitespace().collect();
        let (name, rtype) = match words.as_slice() {
            [] => return Err(format!("empty; {QUERY_FORM}")),
            [name] => (*name, RecordType::A),
            [name, rtype] => (*name, parse_rtype(rtype)?),
            more => return Err(format!("{} words; {QUERY_FORM}", more.len())),
        };
        // from_ascii takes host names only (no spaces or raw bytes), so to_ascii writes
        // back exactly what it read and Display round-trips.
        let mut name = Name::from_ascii(name)
            .map_err(|e| format!(r#"invalid name "{name}": {e}; {NAME_FORM}"#))?;
        name.set_fqdn(true);
        Ok(Self { name, rtype })
    }
}

/// A record type by its mnemonic, in any case; meta types a probe cannot use are refused.
fn parse_rtype(word: &str) -> Result<RecordType, String> {
    let upper = word.to_ascii_uppercase();
    let meta = match upper.as_str() {
        "ANY" | "*" => Some("servers may refuse or minimize ANY (RFC 8482)"),
        "AXFR" | "IXFR" => Some("a zone transfer is not a health check"),
        "OPT" => Some("OPT is the EDNS pseudo-record, not something to ask for"),
        "TSIG" => Some("TSIG is a transaction signature, not something to ask for"),
        _ => None,
    };
    if let Some(why) = meta {
        return Err(format!(
            r#"type "{word}" cannot be probed: {why}; {TYPE_FORM}"#
        ));
    }
    upper
        .parse()
        .map_err(|_| format!(r#"unknown record type "{word}"; {TYPE_FORM}"#))
}

impl fmt::Display for ProbeQuery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // to_ascii, not Name's Display: the latter turns punycode labels into UTF-8,
        // which FromStr would not read back.
        write!(f, "{} {}", self.name.to_ascii(), self.rtype)
    }
}

/// Response codes with a name, as RFC 1035 and RFC 6895 spell them.
const RCODE_NAMES: [(&str, u16); 11] = [
    ("NOERROR", 0),
    ("FORMERR", 1),
    ("SERVFAIL", 2),
    ("NXDOMAIN", 3),
    ("NOTIMP", 4),
    ("REFUSED", 5),
    ("YXDOMAIN", 6),
    ("YXRRSET", 7),
    ("NXRRSET", 8),
    ("NOTAUTH", 9),
    ("NOTZONE", 10),
];

/// An expected response code, spelled as in RFC 1035/6895: NOERROR, FORMERR, SERVFAIL,
/// NXDOMAIN, NOTIMP, REFUSED, YXDOMAIN, YXRRSET, NXRRSET, NOTAUTH, NOTZONE
/// (case-insensitive), or a number 0-4095.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rcode(pub u16);

impl Rcode {
    /// 12 bits: 4 in the header and 8 more in the EDNS OPT record (RFC 6891 6.1.3).
    pub const MAX: u16 = 4095;
}

impl From<ResponseCode> for Rcode {
    fn from(code: ResponseCode) -> Self {
        Self(u16::from(code))
    }
}

impl FromStr for Rcode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if let Some((_, code)) = RCODE_NAMES
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(s))
        {
            return Ok(Self(*code));
        }
        // Digits only: u16's parser would also take "+3".
        if s.bytes().all(|b| b.is_ascii_digit())
            && let Ok(code) = s.parse::<u16>()
            && code <= Self::MAX
        {
            return Ok(Self(code));
        }
        let names: Vec<&str> = RCODE_NAMES.iter().map(|(name, _)| *name).collect();
        Err(format!(
            r#"unknown response code "{s}"; expected one of {} (any case) or a number from 0 to {}"#,
            names.join(", "),
            Self::MAX
        ))
    }
}

impl fmt::Display for Rcode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match RCODE_NAMES.iter().find(|(_, code)| *code == self.0) {
            Some((name, _)) => f.write_str(name),
            None => write!(f, "{}", self.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_query_parses_names_and_types() {
        for (text, shown) in [
            ("health.example. A", "health.example. A"),
            ("health.example", "health.example. A"),
            ("  Health.Example   aaaa ", "Health.Example. AAAA"),
            ("txt.example TXT", "txt.example. TXT"),
            ("example. SOA", "example. SOA"),
            (". NS", ". NS"),
            ("_dns.svc.example. SRV", "_dns.svc.example. SRV"),
            (r"a\.b.example", r"a\.b.example. A"),
            ("xn--bcher-kva.example", "xn--bcher-kva.example. A"),
        ] {
            let query: ProbeQuery = text.parse().unwrap_or_else(|e| panic!("{text:?}: {e}"));
            assert!(query.name.is_fqdn(), "{text:?}");
            assert_eq!(query.to_string(), shown, "{text:?}");
            assert_eq!(shown.parse::<ProbeQuery>().unwrap(), query, "{shown:?}");
        }
        let query: ProbeQuery = "health.example".parse().unwrap();
        assert_eq!(query.rtype, RecordType::A);
        assert_eq!(query.name, Name::from_ascii("health.example.").unwrap());
    }

    #[test]
    fn probe_query_rejects_with_what_is_accepted() {
        let long_label = format!("{}.example", "a".repeat(64));
        let too_long = ["abcdefghi"; 26].join(".");
        for (text, why) in [
            ("", "empty"),
            ("   ", "empty"),
            ("health.example. A extra", "3 words"),
            ("health.example. BOGUS", r#"unknown record type "BOGUS""#),
            ("health.example. ANY", "RFC 8482"),
            ("health.example. *", "RFC 8482"),
            ("health.example. axfr", "zone transfer"),
            ("health.example. IXFR", "zone transfer"),
            ("health.example. OPT", "EDNS"),
            ("health.example. TSIG", "signature"),
            (long_label.as_str(), "invalid name"),
            ("a..example A", "invalid name"),
            ("-a.example A", "invalid name"),
            ("a@b.example A", "invalid name"),
            ("a\\032b.example A", "invalid name"),
            (too_long.as_str(), "invalid name"),
        ] {
            let err = text.parse::<ProbeQuery>().unwrap_err();
            assert!(err.contains(why), "{text:?}: {err}");
            assert!(err.contains(r#""NAME [TYPE]""#), "{text:?}: {err}");
        }
    }

    #[test]
    fn rcode_parses_names_and_numbers() {
        for (text, code, shown) in [
            ("NOERROR", 0, "NOERROR"),
            ("nxdomain", 3, "NXDOMAIN"),
            ("ServFail", 2, "SERVFAIL"),
            ("NOTZONE", 10, "NOTZONE"),
            ("5", 5, "REFUSED"),
            ("16", 16, "16"),
            ("4095", 4095, "4095"),
        ] {
            let rcode: Rcode = text.parse().unwrap_or_else(|e| panic!("{text:?}: {e}"));
            assert_eq!(rcode, Rcode(code), "{text:?}");
            assert_eq!(rcode.to_string(), shown, "{text:?}");
            assert_eq!(shown.parse::<Rcode>().unwrap(), rcode, "{shown:?}");
        }
        assert_eq!(Rcode::from(ResponseCode::NXDomain), Rcode(3));
        for text in ["", "FINE", "4096", "-1", "+3", "0x3", "NO ERROR"] {
            let err = text.parse::<Rcode>().unwrap_err();
            assert!(err.contains("NOERROR, FORMERR"), "{text:?}: {err}");
            assert!(err.contains("0 to 4095"), "{text:?}: {err}");
        }
    }
}

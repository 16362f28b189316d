//! The control socket: how `dnsteer backends` reaches a running `dnsteer run`.
//!
//! `dnsteer run` owns the backend state (it also reloads its config), so other
//! processes ask it for changes rather than write maps themselves: one writer,
//! changes applied in order. The socket is an abstract Unix socket named
//! `dnsteer/<iface>`: abstract names belong to the network namespace, like the
//! interface, and vanish with the process. Requests and responses are one JSON
//! object per line. Only root or the daemon's own user may connect.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::{
        linux::net::SocketAddrExt as _,
        unix::net::{SocketAddr, UnixStream},
    },
    time::Duration,
};

pub mod server;

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};

use crate::{
    config::{self, BackendSpec},
    health::HealthStats,
    live::{Change, Member},
};

/// The abstract socket name of the instance on `iface`.
pub fn socket_name(iface: &str) -> String {
    format!("dnsteer/{iface}")
}

/// What a client asks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub service: String,
    #[serde(flatten)]
    pub op: Op,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    List,
    Add {
        backend: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        weight: Option<u32>,
    },
    Remove {
        backend: String,
    },
    Drain {
        backend: String,
    },
    /// `ADDR:PORT[=WEIGHT]` each.
    Set {
        backends: Vec<String>,
    },
    /// Detach, remove the pins (also a persistent instance's) and exit.
    Stop,
}

impl Op {
    /// The change this asks for; `None` for `list`. Errors say what is wrong with the input.
    pub fn change(&self) -> Result<Option<Change>> {
        let addr =
            |s: &str| config::parse_backend_addr(s).map_err(|e| anyhow::anyhow!("{s:?}: {e}"));
        Ok(Some(match self {
            Op::List | Op::Stop => return Ok(None),
            Op::Add { backend, weight } => Change::Add(addr(backend)?, weight.unwrap_or(1)),
            Op::Remove { backend } => Change::Remove(addr(backend)?),
            Op::Drain { backend } => Change::Drain(addr(backend)?),
            Op::Set { backends } => {
                if backends.is_empty() {
                    bail!("set needs at least one backend; to stop balancing, drain them instead");
                }
                Change::Set(
                    backends
                        .iter()
                        .map(|s| {
                            s.parse::<BackendSpec>()
                                .map_err(|e| anyhow::anyhow!("{s:?}: {e}"))
                        })
                        .collect::<Result<_>>()?,
                )
            }
        }))
    }
}

/// A backend as `dnsteer backends list` and the control socket report it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendView {
    pub address: String,
    pub weight: u32,
    /// `active`, `draining` or `down` (failed its health checks).
    pub state: String,
    /// What the health probes say; null without `[service.health]`.
    #[serde(default)]
    pub health: Option<HealthStats>,
}

impl BackendView {
    /// `member` with what the health probes say of it.
    pub fn new(member: Member, health: Option<HealthStats>) -> Self {
        let Member {
            address,
            weight,
            state,
        } = member;
        Self {
            address,
            weight,
            state,
            health,
        }
    }
}

/// The daemon's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What changed, for the log and the user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub service: String,
    /// Every weighted backend failed its health checks, so all take new flows.
    #[serde(default)]
    pub fail_open: bool,
    /// The service's backends after the request.
    #[serde(default)]
    pub backends: Vec<BackendView>,
    /// The Kubernetes watch feeding the service, if one does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubernetesStats>,
}

/// How the watch of a Kubernetes-fed service stands, as `stats` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubernetesStats {
    /// `NAMESPACE/SERVICE port PORT`.
    pub source: String,
    /// A complete list is in and no watch is failing; while false the
    /// backends stay as they were last seen.
    pub connected: bool,
    /// When the API server last sent something (a list or an event), in
    /// milliseconds since the Unix epoch; null before it ever did.
    pub last_sync_unix_ms: Option<u64>,
    /// Failed lists and watches (and `410 Gone` relists) since the start.
    pub watch_errors: u64,
    /// Endpoints in the Service's EndpointSlices, whatever their state.
    pub endpoints_seen: u64,
    /// The last error, while not connected.
    pub last_error: Option<String>,
}

impl Response {
    pub fn error(service: &str, error: impl std::fmt::Display) -> Self {
        Self {
            ok: false,
            error: Some(error.to_string()),
            message: None,
            service: service.to_owned(),
            fail_open: false,
            backends: Vec::new(),
            kubernetes: None,
        }
    }
}

/// Binds the control socket of `iface` (a std listener, for the daemon's runtime).
pub fn bind(iface: &str) -> Result<std::os::unix::net::UnixListener> {
    let name = socket_name(iface);
    let addr = SocketAddr::from_abstract_name(name.as_bytes())?;
    std::os::unix::net::UnixListener::bind_addr(&addr).map_err(|err| {
        if err.kind() == std::io::ErrorKind::AddrInUse {
            anyhow::anyhow!(
                "dnsteer is already running on {iface} in this network namespace (it holds the control socket @{name}); stop that instance first"
            )
        } else {
            anyhow::Error::new(err).context(format!("binding the control socket @{name}"))
        }
    })
}

/// Whether a peer may change backends: root, or the user the daemon runs as.
pub fn allowed(uid: u32) -> bool {
    // SAFETY: no arguments, cannot fail.
    uid == 0 || uid == unsafe { libc::geteuid() }
}

/// The interfaces with a dnsteer control socket in this network namespace.
pub fn running_interfaces() -> Vec<String> {
    let Ok(table) = std::fs::read_to_string("/proc/net/unix") else {
        return Vec::new();
    };
    let mut out: Vec<String> = table
        .lines()
        .filter_map(|line| line.split_whitespace().nth(7))
        .filter_map(|path| path.strip_prefix("@dnsteer/"))
        .map(str::to_owned)
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Picks the interface: the one given, or the only one running.
pub fn pick_interface(iface: Option<&str>) -> Result<String> {
    if let Some(iface) = iface {
        return Ok(iface.to_owned());
    }
    match running_interfaces().as_slice() {
        [] => {
            bail!("no dnsteer is running in this network namespace (start one with `dnsteer run`)")
        }
        [only] => Ok(only.clone()),
        many => bail!(
            "dnsteer runs on several interfaces ({}); pick one with --iface",
            many.join(", ")
        ),
    }
}

/// Sends one request to the instance on `iface` and waits for its answer.
pub fn request(iface: &str, request: &Request) -> Result<Response> {
    let name = socket_name(iface);
    let addr = SocketAddr::from_abstract_name(name.as_bytes())?;
    let mut stream = UnixStream::connect_addr(&addr).with_context(|| {
        format!("connecting to dnsteer on {iface} (@{name}); is `dnsteer run` running there, in this network namespace?")
    })?;
    // A change waits for up to two RCU grace periods; this is generous.
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut line = serde_json::to_string(request)?;
    line.push('\n');
    stream
        .write_all(line.as_bytes())
        .context("sending the request")?;
    let mut reply = String::new();
    BufReader::new(stream)
        .read_line(&mut reply)
        .context("reading dnsteer's answer")?;
    if reply.is_empty() {
        bail!("dnsteer on {iface} closed the connection without answering (see its log)");
    }
    serde_json::from_str(&reply).with_context(|| format!("decoding dnsteer's answer {reply:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_as_one_json_line() {
        let req = Request {
            service: "dns".to_owned(),
            op: Op::Add {
                backend: "10.0.0.2:53".to_owned(),
                weight: Some(3),
            },
        };
        let line = serde_json::to_string(&req).unwrap();
        assert_eq!(
            line,
            r#"{"service":"dns","op":"add","backend":"10.0.0.2:53","weight":3}"#
        );
        assert_eq!(serde_json::from_str::<Request>(&line).unwrap(), req);
        let set: Request = serde_json::from_str(
            r#"{"service":"dns","op":"set","backends":["10.0.0.2:53=2","10.0.0.3:53"]}"#,
        )
        .unwrap();
        let Some(Change::Set(list)) = set.op.change().unwrap() else {
            panic!("not a set")
        };
        assert_eq!((list.len(), list[0].weight, list[1].weight), (2, 2, 1));
        // IPv6 backends in brackets, also weighted.
        let set: Request = serde_json::from_str(
            r#"{"service":"dns6","op":"set","backends":["[2001:db8::2]:53=2","[2001:db8::3]:5353"]}"#,
        )
        .unwrap();
        let Some(Change::Set(list)) = set.op.change().unwrap() else {
            panic!("not a set")
        };
        assert_eq!(
            list.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["[2001:db8::2]:53=2", "[2001:db8::3]:5353"]
        );
        let add = Op::Add {
            backend: "[2001:db8::4]:53".to_owned(),
            weight: None,
        };
        assert_eq!(
            add.change().unwrap(),
            Some(Change::Add("[2001:db8::4]:53".parse().unwrap(), 1))
        );
        let err = Op::Remove {
            backend: "2001:db8::4:53".to_owned(),
        }
        .change()
        .unwrap_err()
        .to_string();
        assert!(err.contains("goes in brackets"), "{err}");
    }

    #[test]
    fn bad_input_is_refused_with_the_value() {
        let op = Op::Remove {
            backend: "10.0.0.2".to_owned(),
        };
        let err = op.change().unwrap_err().to_string();
        assert!(err.contains("\"10.0.0.2\""), "{err}");
        let op = Op::Set { backends: vec![] };
        assert!(op.change().is_err());
        assert_eq!(Op::List.change().unwrap(), None);
    }
}

//! The steering methods, as data: what each puts on the node and how it is
//! taken off again. Rules go into the node's namespace only.

use std::{
    fmt::Write as _,
    io::Write as _,
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    process::Stdio,
};

use anyhow::{Context as _, Result, bail};
use testbed::{
    NetNs,
    dnsteer::{Dnsteer, service_config},
};

/// How a method steers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// No steering: the load goes straight to the first backend through the
    /// node's plain forwarding. The CPU baseline.
    Baseline,
    /// `iptables-restore` input for the node.
    Iptables(Rules),
    /// `nft -f` input for the node.
    Nft,
    /// `dnsteer run` on the node's eth3.
    Dnsteer {
        select: &'static str,
        xdp_mode: &'static str,
        /// Services configured; the one under load is one of them.
        services: usize,
        /// The `forward` config key, when the method needs it.
        forward: Option<&'static str>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rules {
    /// The operators' cascaded `--mode nth --every 4/3/2/1` DNAT rules.
    Nth,
    /// The operators' cascaded `--mode random --probability` DNAT rules.
    Random,
    /// kube-proxy's iptables mode with this many services.
    KubeProxy(usize),
}

#[derive(Debug, Clone)]
pub struct Method {
    /// Stable key in the JSON.
    pub id: String,
    pub label: String,
    /// The issue's letter for it.
    pub group: &'static str,
    pub kind: Kind,
    /// Part of `--quick`.
    pub quick: bool,
}

fn method(id: &str, label: &str, group: &'static str, kind: Kind, quick: bool) -> Method {
    Method {
        id: id.to_owned(),
        label: label.to_owned(),
        group,
        kind,
        quick,
    }
}

fn dnsteer(
    select: &'static str,
    xdp_mode: &'static str,
    services: usize,
    forward: Option<&'static str>,
) -> Kind {
    Kind::Dnsteer {
        select,
        xdp_mode,
        services,
        forward,
    }
}

/// Every method, baseline first and the reference (iptables nth) second.
pub fn all() -> Vec<Method> {
    let mut list = vec![
        method(
            "baseline",
            "no steering (plain forwarding to one backend)",
            "-",
            Kind::Baseline,
            true,
        ),
        method(
            "iptables-nth",
            "iptables nth (DNAT, --state NEW, --every 4/3/2/1)",
            "a",
            Kind::Iptables(Rules::Nth),
            true,
        ),
        method(
            "iptables-random",
            "iptables random (--probability 0.25/0.3333/0.5/1)",
            "b",
            Kind::Iptables(Rules::Random),
            false,
        ),
    ];
    for (n, quick) in [(1, false), (1000, true), (10000, false)] {
        list.push(method(
            &format!("kube-proxy-{n}"),
            &format!("kube-proxy iptables mode, {n} service(s)"),
            "c",
            Kind::Iptables(Rules::KubeProxy(n)),
            quick,
        ));
    }
    list.extend([
        method(
            "nft-numgen",
            "nftables numgen inc DNAT",
            "d",
            Kind::Nft,
            true,
        ),
        method(
            "dnsteer-nth",
            "dnsteer nth, XDP driver mode",
            "e",
            dnsteer("nth", "driver", 1, None),
            true,
        ),
        method(
            "dnsteer-random",
            "dnsteer random, XDP driver mode",
            "e",
            dnsteer("random", "driver", 1, None),
            false,
        ),
        method(
            "dnsteer-skb",
            "dnsteer nth, XDP skb (generic) mode",
            "f",
            dnsteer("nth", "skb", 1, None),
            true,
        ),
        method(
            "dnsteer-redirect",
            "dnsteer fast path (forward = \"redirect\")",
            "g",
            dnsteer("nth", "driver", 1, Some("redirect")),
            true,
        ),
    ]);
    for (n, quick) in [(1, false), (1000, true), (10000, false)] {
        list.push(method(
            &format!("dnsteer-services-{n}"),
            &format!("dnsteer nth, driver mode, {n} service(s) configured"),
            "h",
            dnsteer("nth", "driver", n, None),
            quick,
        ));
    }
    list
}

/// The id of the method every other one is compared with.
pub const REFERENCE: &str = "iptables-nth";
pub const BASELINE: &str = "baseline";

/// The node's interface and addresses the rules are written for.
pub struct Target<'a> {
    pub iface: &'a str,
    pub service: SocketAddr,
    /// The other listen addresses of the service (eth3's aliases).
    pub aliases: &'a [SocketAddr],
    pub backends: &'a [Ipv4Addr],
}

/// The operators' rules, exactly as in the README, one per backend.
pub fn operator_rules(rules: Rules, t: &Target) -> String {
    let n = t.backends.len();
    let mut out = String::from("*nat\n");
    for (i, backend) in t.backends.iter().enumerate() {
        let pick = match rules {
            Rules::Nth => format!("-m statistic --mode nth --every {} --packet 0 ", n - i),
            Rules::Random if i + 1 < n => {
                format!(
                    "-m statistic --mode random --probability {} ",
                    probability(n - i)
                )
            }
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "-A PREROUTING -i {} -p udp --dport 53 -m state --state NEW {pick}-j DNAT --to-destination {backend}:53",
            t.iface
        );
    }
    out.push_str("COMMIT\n");
    out
}

/// 1/k to four places, as operators write it (0.25, 0.3333, 0.5).
fn probability(k: usize) -> String {
    let p = format!("{:.4}", 1.0 / k as f64);
    p.trim_end_matches('0').to_owned()
}

/// kube-proxy's iptables mode (KUBE-SERVICES -> KUBE-SVC-* -> KUBE-SEP-*,
/// statistic random, KUBE-MARK-MASQ, MASQUERADE) with `services` services:
/// the one under load (the service address, the four backends) sits in the
/// middle of KUBE-SERVICES, the average place in kube-proxy's linear list;
/// the others are ClusterIPs in 10.96.0.0/12 with one endpoint each.
pub fn kube_proxy_rules(services: usize, t: &Target) -> String {
    let mut nat = String::from(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n\
         :KUBE-SERVICES - [0:0]\n:KUBE-POSTROUTING - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n",
    );
    let mut rules = String::new();
    let ours = services / 2;
    for s in 0..services {
        let (vip, endpoints): (Ipv4Addr, Vec<Ipv4Addr>) = if s == ours {
            let SocketAddr::V4(v) = t.service else {
                unreachable!("the service address is IPv4");
            };
            (*v.ip(), t.backends.to_vec())
        } else {
            let k = s as u32;
            (
                Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 10)) + k),
                vec![Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 244, 0, 10)) + k)],
            )
        };
        let svc = format!("KUBE-SVC-{s:08X}");
        let _ = writeln!(nat, ":{svc} - [0:0]");
        let _ = writeln!(
            rules,
            "-A KUBE-SERVICES -d {vip}/32 -p udp -m comment --comment \"ns{s}/svc{s}:dns cluster IP\" -m udp --dport 53 -j {svc}"
        );
        let _ = writeln!(
            rules,
            "-A {svc} ! -s 10.244.0.0/16 -d {vip}/32 -p udp -m comment --comment \"ns{s}/svc{s}:dns cluster IP\" -m udp --dport 53 -j KUBE-MARK-MASQ"
        );
        for (e, endpoint) in endpoints.iter().enumerate() {
            let sep = format!("KUBE-SEP-{s:08X}{e:02X}");
            let _ = writeln!(nat, ":{sep} - [0:0]");
            let left = endpoints.len() - e;
            let pick = if left > 1 {
                format!(
                    "-m statistic --mode random --probability {:.11} ",
                    1.0 / left as f64
                )
            } else {
                String::new()
            };
            let _ = writeln!(
                rules,
                "-A {svc} -m comment --comment \"ns{s}/svc{s}:dns -> {endpoint}:53\" {pick}-j {sep}"
            );
            let _ = writeln!(
                rules,
                "-A {sep} -s {endpoint}/32 -m comment --comment \"ns{s}/svc{s}:dns\" -j KUBE-MARK-MASQ"
            );
            let _ = writeln!(
                rules,
                "-A {sep} -p udp -m comment --comment \"ns{s}/svc{s}:dns\" -m udp -j DNAT --to-destination {endpoint}:53"
            );
        }
    }
    nat.push_str(
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n\
         -A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000\n\
         -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n\
         -A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0\n\
         -A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n",
    );
    nat.push_str(&rules);
    nat.push_str("COMMIT\n");
    nat.push_str(
        "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:KUBE-FORWARD - [0:0]\n\
         -A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD\n\
         -A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n\
         -A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark 0x4000/0x4000 -j ACCEPT\n\
         -A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
         COMMIT\n",
    );
    nat
}

/// nftables' round robin: `numgen inc mod N` mapped to the backends.
pub fn nft_rules(t: &Target) -> String {
    let map = t
        .backends
        .iter()
        .enumerate()
        .map(|(i, b)| format!("{i} : {b}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "table ip dnsteer_bench {{\n  chain prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;\n    \
         iifname \"{}\" udp dport 53 dnat to numgen inc mod {} map {{ {map} }}\n  }}\n}}\n",
        t.iface,
        t.backends.len()
    )
}

/// dnsteer's config: the service under load (its listen addresses, the four
/// backends) and `services - 1` others, each a ClusterIP-like address with one
/// backend of its own.
pub fn dnsteer_config(kind: &Kind, t: &Target) -> Option<String> {
    let Kind::Dnsteer {
        select,
        services,
        forward,
        ..
    } = kind
    else {
        return None;
    };
    let listen: Vec<SocketAddr> = std::iter::once(t.service)
        .chain(t.aliases.iter().copied())
        .collect();
    let backends: Vec<SocketAddr> = t
        .backends
        .iter()
        .map(|b| SocketAddr::from((*b, 53)))
        .collect();
    let mut config = String::new();
    if let Some(forward) = forward {
        let _ = writeln!(config, "forward = \"{forward}\"");
    }
    config.push_str(&service_config(t.iface, select, &listen, &backends));
    for s in 1..*services {
        let k = s as u32;
        let vip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 10)) + k);
        let backend = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 244, 0, 10)) + k);
        let _ = write!(
            config,
            "\n[[service]]\nname = \"svc{s}\"\nlisten = [\"{vip}:53\"]\nselect = \"{select}\"\nbackends = [\"{backend}:53\"]\n"
        );
    }
    if *services > 1 {
        let _ = write!(
            config,
            "\n[limits]\nservices = {services}\nlisteners = {}\n",
            services + listen.len()
        );
    }
    Some(config)
}

/// How long `dnsteer run` may take to load its config and attach.
const DNSTEER_READY: std::time::Duration = std::time::Duration::from_secs(600);

/// Feeds `input` to `program args` in the node namespace.
fn run_with_stdin(ns: &NetNs, program: &str, args: &[&str], input: &str) -> Result<()> {
    let mut child = ns
        .command(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {program}"))?;
    child
        .stdin
        .take()
        .context("no stdin")?
        .write_all(input.as_bytes())
        .with_context(|| format!("writing to {program}"))?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{program} {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Something running on the node for one method; dropping it leaves the node
/// as it was (no rules, no dnsteer).
pub enum Applied {
    Nothing,
    Netfilter,
    Dnsteer(Box<Dnsteer>),
}

/// Why a method did not run.
pub enum Unavailable {
    /// This build of dnsteer does not have what the method needs.
    NotInBuild(String),
    Failed(anyhow::Error),
}

/// Puts `kind` on the node.
pub fn apply(
    kind: &Kind,
    node: &NetNs,
    dnsteer_bin: &Path,
    t: &Target,
) -> std::result::Result<Applied, Unavailable> {
    let fail = |e: anyhow::Error| Unavailable::Failed(e);
    match kind {
        Kind::Baseline => Ok(Applied::Nothing),
        Kind::Iptables(rules) => {
            let text = match rules {
                Rules::KubeProxy(n) => kube_proxy_rules(*n, t),
                r => operator_rules(*r, t),
            };
            run_with_stdin(node, "iptables-restore", &[], &text).map_err(fail)?;
            Ok(Applied::Netfilter)
        }
        Kind::Nft => {
            run_with_stdin(node, "nft", &["-f", "-"], &nft_rules(t)).map_err(fail)?;
            Ok(Applied::Netfilter)
        }
        Kind::Dnsteer { xdp_mode, .. } => {
            let config = dnsteer_config(kind, t).expect("a dnsteer method");
            let mode = format!("--xdp-mode={xdp_mode}");
            // Loading thousands of services takes dnsteer well over the test
            // bed's default 20 s.
            match Dnsteer::start_with_timeout(
                testbed::dnsteer::Launch::IpNetnsExec,
                node,
                dnsteer_bin,
                t.iface,
                &config,
                &[&mode],
                DNSTEER_READY,
            ) {
                Ok(d) => Ok(Applied::Dnsteer(Box::new(d))),
                Err(e) => {
                    let text = format!("{e:#}");
                    match text.lines().find(|l| l.contains("unknown field")) {
                        Some(line) => Err(Unavailable::NotInBuild(format!(
                            "dnsteer run refuses the config: {}",
                            line.trim()
                        ))),
                        None => Err(Unavailable::Failed(e)),
                    }
                }
            }
        }
    }
}

/// Takes the method off the node: dnsteer stopped, every netfilter table gone.
pub fn remove(applied: Applied, node: &NetNs) -> Result<()> {
    match applied {
        Applied::Nothing => Ok(()),
        Applied::Netfilter => node.run(&["nft", "flush", "ruleset"]).map(drop),
        Applied::Dnsteer(mut d) => d.stop(),
    }
}

/// Empties the node's conntrack table, so each step starts from none.
pub fn flush_conntrack(node: &NetNs) {
    // Fails harmlessly (nothing to flush) when conntrack is not in use.
    let _ = node.run(&["conntrack", "-F"]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> (Vec<Ipv4Addr>, Vec<SocketAddr>) {
        (
            (2..=5).map(|i| Ipv4Addr::new(10, 100, 13, i)).collect(),
            vec!["192.0.2.11:53".parse().unwrap()],
        )
    }

    #[test]
    fn operator_rules_are_the_readme_cascade() {
        let (backends, aliases) = target();
        let t = Target {
            iface: "eth3",
            service: "192.0.2.10:53".parse().unwrap(),
            aliases: &aliases,
            backends: &backends,
        };
        let nth = operator_rules(Rules::Nth, &t);
        assert!(nth.contains("-A PREROUTING -i eth3 -p udp --dport 53 -m state --state NEW -m statistic --mode nth --every 4 --packet 0 -j DNAT --to-destination 10.100.13.2:53"), "{nth}");
        assert!(
            nth.contains("--every 1 --packet 0 -j DNAT --to-destination 10.100.13.5:53"),
            "{nth}"
        );
        let random = operator_rules(Rules::Random, &t);
        assert!(
            random.contains("--probability 0.25 -j DNAT --to-destination 10.100.13.2:53"),
            "{random}"
        );
        assert!(
            random.contains("--probability 0.3333 -j DNAT --to-destination 10.100.13.3:53"),
            "{random}"
        );
        assert!(
            random.contains("--probability 0.5 -j DNAT --to-destination 10.100.13.4:53"),
            "{random}"
        );
        assert!(
            random.contains("--state NEW -j DNAT --to-destination 10.100.13.5:53"),
            "{random}"
        );
    }

    #[test]
    fn kube_proxy_has_every_service_and_ours_once() {
        let (backends, aliases) = target();
        let t = Target {
            iface: "eth3",
            service: "192.0.2.10:53".parse().unwrap(),
            aliases: &aliases,
            backends: &backends,
        };
        let rules = kube_proxy_rules(1000, &t);
        assert_eq!(rules.matches("-A KUBE-SERVICES ").count(), 1000);
        assert_eq!(
            rules.matches("-d 192.0.2.10/32 -p udp -m comment").count(),
            2
        );
        assert_eq!(rules.matches("--to-destination 10.100.13.").count(), 4);
        assert!(rules.contains("MASQUERADE --random-fully"));
        let one = kube_proxy_rules(1, &t);
        assert_eq!(one.matches("-A KUBE-SERVICES ").count(), 1);
    }

    #[test]
    fn dnsteer_config_scales_services_and_limits() {
        let (backends, aliases) = target();
        let t = Target {
            iface: "eth3",
            service: "192.0.2.10:53".parse().unwrap(),
            aliases: &aliases,
            backends: &backends,
        };
        let one = dnsteer_config(&dnsteer("nth", "driver", 1, None), &t).unwrap();
        assert!(!one.contains("[limits]") && !one.contains("forward"));
        let many = dnsteer_config(&dnsteer("nth", "driver", 1000, Some("redirect")), &t).unwrap();
        assert!(many.starts_with("forward = \"redirect\"\n"));
        assert_eq!(many.matches("[[service]]").count(), 1000);
        assert!(many.contains("services = 1000\nlisteners = 1002\n"));
    }

    #[test]
    fn the_list_has_every_issue_method_once() {
        let list = all();
        let ids: std::collections::BTreeSet<_> = list.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(ids.len(), list.len());
        assert_eq!(list[0].id, BASELINE);
        assert_eq!(list[1].id, REFERENCE);
        for group in ["a", "b", "c", "d", "e", "f", "g", "h"] {
            assert!(list.iter().any(|m| m.group == group), "{group}");
        }
    }
}

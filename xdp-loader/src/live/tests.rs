use std::{collections::HashMap, path::Path};

use xdp_common::{PROTO_TCP, PROTO_UDP, addr_of};

use super::*;
use crate::config;

/// One write, as the fake store saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Write {
    Backend(u32, u8),
    Zero(u32),
    Ring(u32),
    Flip(u32, u32),
    Listen(Endpoint, Option<u32>),
    Sync,
    Other,
}

/// Maps in memory, plus the data path's invariants checked after every write.
#[derive(Default)]
struct Fake {
    backends: HashMap<u32, Backend>,
    rings: HashMap<u32, Ring>,
    active: HashMap<u32, u32>,
    listens: BTreeMap<Endpoint, u32>,
    sources: BTreeMap<Endpoint, u32>,
    confs: HashMap<u32, ServiceConf>,
    flow_settings: FlowSettings,
    /// Ring keys that stopped being active and had no grace period since.
    unsettled: BTreeSet<u32>,
    log: Vec<Write>,
}

impl Fake {
    fn ring(&self, service: u32) -> Option<&Ring> {
        let generation = self.active.get(&service).copied().unwrap_or(0);
        self.rings.get(&ring_key(service, generation))
    }

    /// Every backend a packet could pick right now is ACTIVE.
    fn check(&self) {
        for service in self.listens.values() {
            if let Some(ring) = self.ring(*service) {
                for &local in &ring.slots[..ring.len as usize] {
                    let slot = backend_slot(*service, local as u32);
                    let state = self.backends.get(&slot).map(|b| b.state);
                    assert_eq!(
                        state,
                        Some(backend_state::ACTIVE),
                        "service {service}'s ring names slot {slot} in state {state:?}; log: {:?}",
                        self.log
                    );
                }
            }
        }
    }

    fn picks(&self, service: u32) -> Vec<SocketAddr> {
        let ring = self.ring(service).expect("a ring");
        ring.slots[..ring.len as usize]
            .iter()
            .map(|&l| {
                let b = self.backends[&backend_slot(service, l as u32)];
                SocketAddr::new(ip_of(b.addr), u16::from_be_bytes(b.port))
            })
            .collect()
    }

    /// The writes after `mark`, less the ones no invariant is about.
    fn since(&self, mark: usize) -> Vec<Write> {
        self.log[mark..]
            .iter()
            .filter(|w| **w != Write::Other)
            .cloned()
            .collect()
    }
}

impl Store for Fake {
    fn write_backend(&mut self, slot: u32, backend: &Backend) -> Result<()> {
        self.backends.insert(slot, *backend);
        self.log.push(Write::Backend(slot, backend.state));
        self.check();
        Ok(())
    }
    fn zero_backend_stats(&mut self, slot: u32) -> Result<()> {
        self.log.push(Write::Zero(slot));
        Ok(())
    }
    fn write_ring(&mut self, key: u32, ring: &Ring) -> Result<()> {
        let service = key / 2;
        let in_use = ring_key(service, self.active.get(&service).copied().unwrap_or(0));
        let live = self.listens.values().any(|&s| s == service);
        assert!(!(live && key == in_use), "wrote the ring in use ({key})");
        assert!(
            !self.unsettled.contains(&key),
            "rewrote ring {key} before a grace period"
        );
        self.rings.insert(key, *ring);
        self.log.push(Write::Ring(key));
        Ok(())
    }
    fn flip(&mut self, service: u32, generation: u32) -> Result<()> {
        let old = ring_key(service, self.active.get(&service).copied().unwrap_or(0));
        self.unsettled.insert(old);
        self.active.insert(service, generation);
        self.log.push(Write::Flip(service, generation));
        self.check();
        Ok(())
    }
    fn write_conf(&mut self, service: u32, conf: &ServiceConf) -> Result<()> {
        self.confs.insert(service, *conf);
        self.log.push(Write::Other);
        Ok(())
    }
    fn insert_listen(&mut self, listen: &Endpoint, service: u32) -> Result<()> {
        assert!(self.ring(service).is_some(), "listen before its ring");
        self.listens.insert(*listen, service);
        self.log.push(Write::Listen(*listen, Some(service)));
        self.check();
        Ok(())
    }
    fn remove_listen(&mut self, listen: &Endpoint) -> Result<()> {
        self.listens.remove(listen);
        self.log.push(Write::Listen(*listen, None));
        Ok(())
    }
    fn set_source(&mut self, source: &Endpoint, refs: u32) -> Result<()> {
        if refs == 0 {
            self.sources.remove(source);
        } else {
            self.sources.insert(*source, refs);
        }
        self.log.push(Write::Other);
        Ok(())
    }
    fn write_flow_settings(&mut self, settings: &FlowSettings) -> Result<()> {
        self.flow_settings = *settings;
        self.log.push(Write::Other);
        Ok(())
    }
    fn read_conf(&mut self, service: u32) -> Result<ServiceConf> {
        Ok(self.confs.get(&service).copied().unwrap_or_default())
    }
    fn read_active(&mut self, service: u32) -> Result<u32> {
        Ok(self.active.get(&service).copied().unwrap_or(0))
    }
    fn read_ring(&mut self, key: u32) -> Result<Ring> {
        Ok(self.rings.get(&key).copied().unwrap_or_default())
    }
    fn read_backend(&mut self, slot: u32) -> Result<Backend> {
        Ok(self.backends.get(&slot).copied().unwrap_or_default())
    }
    fn read_listens(&mut self) -> Result<Vec<(Endpoint, u32)>> {
        Ok(self.listens.iter().map(|(e, id)| (*e, *id)).collect())
    }
    fn read_flow_settings(&mut self) -> Result<FlowSettings> {
        Ok(self.flow_settings)
    }
    fn synchronize(&mut self) -> Result<()> {
        self.unsettled.clear();
        self.log.push(Write::Sync);
        Ok(())
    }
}

fn parse(text: &str) -> Config {
    config::parse(text, Path::new("test.toml")).unwrap()
}

fn one_service(backends: &str) -> Config {
    parse(&format!(
        "interface = \"lo\"\n[[service]]\nname = \"dns\"\nlisten = [\"192.0.2.10:53\"]\nbackends = [{backends}]\n"
    ))
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn started(backends: &str) -> Live<Fake> {
    let mut live = Live::new(Fake::default());
    live.apply(&one_service(backends)).unwrap();
    live
}

const FOUR: &str = r#""10.0.0.2:53", "10.0.0.3:53", "10.0.0.4:53", "10.0.0.5:53""#;

#[test]
fn start_fills_backends_then_ring_then_listens() {
    let live = started(FOUR);
    let fake = live.store();
    assert_eq!(
        fake.picks(0),
        ["10.0.0.2:53", "10.0.0.3:53", "10.0.0.4:53", "10.0.0.5:53"].map(addr)
    );
    let first = |w: &dyn Fn(&Write) -> bool| fake.log.iter().position(w).unwrap();
    let last_backend = fake
        .log
        .iter()
        .rposition(|w| matches!(w, Write::Backend(..)))
        .unwrap();
    assert!(last_backend < first(&|w| matches!(w, Write::Ring(_))));
    assert!(first(&|w| matches!(w, Write::Flip(..))) < first(&|w| matches!(w, Write::Listen(..))));
    assert_eq!(fake.sources.len(), 4);
}

#[test]
fn remove_flips_first_marks_removed_then_waits() {
    let mut live = started(FOUR);
    let mark = live.store().log.len();
    let (after, _) = live
        .change("dns", &Change::Remove(addr("10.0.0.3:53")))
        .unwrap();
    assert_eq!(after.len(), 3);
    let fake = live.store();
    assert_eq!(
        fake.since(mark),
        [
            Write::Ring(0),
            Write::Flip(0, 0),
            Write::Sync,
            Write::Backend(1, backend_state::REMOVED),
            Write::Sync,
        ]
    );
    assert!(!fake.picks(0).contains(&addr("10.0.0.3:53")));
    assert_eq!(fake.sources.len(), 3);
}

#[test]
fn down_leaves_the_ring_after_the_flip_and_up_rejoins_before_it() {
    let mut live = started(FOUR);
    let b = addr("10.0.0.3:53");
    let mark = live.store().log.len();
    let line = live.set_health("dns", b, false).unwrap();
    assert_eq!(
        line.as_deref(),
        Some("service dns: 10.0.0.3:53 out of selection")
    );
    assert_eq!(
        live.store().since(mark),
        [
            Write::Ring(0),
            Write::Flip(0, 0),
            Write::Sync,
            Write::Backend(1, backend_state::DOWN),
            Write::Sync,
        ]
    );
    assert!(!live.store().picks(0).contains(&b));
    // Still a member: listed as down, weight kept, its source kept for replies.
    let view = live.list("dns").unwrap();
    assert_eq!((view[1].state.as_str(), view[1].weight), ("down", 1));
    assert_eq!(live.members("dns").len(), 4);
    assert_eq!(live.store().sources.len(), 4);
    assert!(!live.fail_open("dns"));
    // Again: nothing to do.
    assert_eq!(live.set_health("dns", b, false).unwrap(), None);

    let mark = live.store().log.len();
    let line = live.set_health("dns", b, true).unwrap();
    assert_eq!(
        line.as_deref(),
        Some("service dns: 10.0.0.3:53 back in selection")
    );
    assert_eq!(
        live.store().since(mark),
        [
            Write::Backend(1, backend_state::ACTIVE),
            Write::Ring(1),
            Write::Flip(0, 1),
            Write::Sync,
        ]
    );
    assert_eq!(live.store().picks(0).len(), 4);
}

#[test]
fn all_weighted_backends_down_fails_open() {
    let mut live = started(
        r#"{ addr = "10.0.0.2:53", weight = 2 }, "10.0.0.3:53", { addr = "10.0.0.4:53", weight = 0 }"#,
    );
    let (a, b, c) = (
        addr("10.0.0.2:53"),
        addr("10.0.0.3:53"),
        addr("10.0.0.4:53"),
    );
    live.set_health("dns", a, false).unwrap();
    assert_eq!(live.store().picks(0), [b]);
    // The draining one does not count: with both weighted ones down, fail open.
    live.set_health("dns", b, false).unwrap();
    assert!(live.fail_open("dns"));
    let mut picks = live.store().picks(0);
    picks.sort();
    assert_eq!(picks, [a, a, b], "weights as configured");
    let states: Vec<String> = live
        .list("dns")
        .unwrap()
        .into_iter()
        .map(|v| v.state)
        .collect();
    assert_eq!(states, ["active", "active", "draining"]);
    // Failing open ignores health altogether: a draining one that goes
    // down keeps its flows, until a weighted one is back.
    live.set_health("dns", c, false).unwrap();
    assert_eq!(live.list("dns").unwrap()[2].state, "draining");
    assert!(live.fail_open("dns"));
    // One back: it alone takes new flows.
    live.set_health("dns", b, true).unwrap();
    assert!(!live.fail_open("dns"));
    assert_eq!(live.store().picks(0), [b]);
    let states: Vec<String> = live
        .list("dns")
        .unwrap()
        .into_iter()
        .map(|v| v.state)
        .collect();
    assert_eq!(states, ["down", "active", "down"]);
}

#[test]
fn health_survives_changes_but_not_removal() {
    let mut live = started(FOUR);
    let b = addr("10.0.0.3:53");
    live.set_health("dns", b, false).unwrap();
    // A weight change keeps it down.
    live.change("dns", &Change::Add(b, 5)).unwrap();
    assert_eq!(live.list("dns").unwrap()[1].state, "down");
    assert!(!live.store().picks(0).contains(&b));
    // Removed and added back, it starts up.
    live.change("dns", &Change::Remove(b)).unwrap();
    live.change("dns", &Change::Add(b, 1)).unwrap();
    assert!(live.store().picks(0).contains(&b));
    // Not a member: nothing to mark.
    assert_eq!(
        live.set_health("dns", addr("10.9.9.9:53"), false).unwrap(),
        None
    );
    assert!(live.set_health("nope", b, false).is_err());
}

/// A second `Live` over the same maps, as a restarted `dnsteer run` makes.
fn restarted(live: Live<Fake>) -> Live<Fake> {
    let fake = live.store;
    let mark = fake.log.len();
    let adopted = Live::adopt(fake, MAX_SERVICES).unwrap();
    assert_eq!(
        adopted.store().log.len(),
        mark,
        "adopting wrote to the maps"
    );
    adopted
}

#[test]
fn adopting_reads_back_the_state_and_writes_nothing() {
    let text = r#"interface = "lo"
[[service]]
name = "dns"
listen = ["192.0.2.11:53", "192.0.2.10:53"]
protocol = "udp+tcp"
backends = [{ addr = "10.0.0.2:53", weight = 3 }, "10.0.0.3:53", "10.0.0.4:53"]
[[service]]
name = "other"
listen = ["*:5300"]
select = "random"
backends = ["10.0.1.2:53"]
[flows]
udp_idle_timeout = "2s"
"#;
    let config = parse(text);
    let mut live = Live::new(Fake::default());
    live.apply(&config).unwrap();
    // Changes made at run time: a drained, a removed, a down backend, a flipped generation.
    live.change("dns", &Change::Drain(addr("10.0.0.3:53")))
        .unwrap();
    live.change("dns", &Change::Remove(addr("10.0.0.4:53")))
        .unwrap();
    live.change("dns", &Change::Add(addr("10.0.0.5:53"), 2))
        .unwrap();
    live.set_health("dns", addr("10.0.0.5:53"), false).unwrap();
    let views = (live.list("dns").unwrap(), live.list("other").unwrap());
    let sources = live.store().sources.clone();
    let generation = live.store().active[&0];

    let mut adopted = restarted(live);
    assert_eq!(
        (adopted.list("dns").unwrap(), adopted.list("other").unwrap()),
        views
    );
    assert_eq!(adopted.sources, sources);
    assert!(!adopted.fail_open("dns"));
    // The config as it stands changes only what the run-time changes did.
    let mark = adopted.store().log.len();
    let lines = adopted.apply(&config).unwrap();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].starts_with("service dns: backends"), "{lines:?}");
    // ... through the generation the data path does not read.
    assert!(
        adopted
            .store()
            .since(mark)
            .contains(&Write::Flip(0, generation ^ 1))
    );
    assert_eq!(
        adopted
            .list("dns")
            .unwrap()
            .iter()
            .map(|v| v.state.as_str())
            .collect::<Vec<_>>(),
        ["active", "active", "active"]
    );
    // Applied again after another restart: nothing to do.
    let mut again = restarted(adopted);
    let mark = again.store().log.len();
    assert!(again.apply(&config).unwrap().is_empty());
    assert_eq!(again.store().since(mark), []);
}

#[test]
fn adopting_empty_maps_finds_nothing() {
    let live = Live::adopt(Fake::default(), MAX_SERVICES).unwrap();
    assert!(live.names().is_empty());
}

#[test]
fn drain_keeps_the_slot_and_leaves_the_ring() {
    let mut live = started(FOUR);
    let mark = live.store().log.len();
    let (after, _) = live
        .change("dns", &Change::Drain(addr("10.0.0.2:53")))
        .unwrap();
    assert_eq!((after[0].state.as_str(), after[0].weight), ("draining", 0));
    assert_eq!(
        live.store().since(mark),
        [
            Write::Ring(0),
            Write::Flip(0, 0),
            Write::Sync,
            Write::Backend(0, backend_state::DRAINING),
            Write::Sync,
        ]
    );
    // Adding it again reactivates it before it enters the ring.
    let mark = live.store().log.len();
    live.change("dns", &Change::Add(addr("10.0.0.2:53"), 2))
        .unwrap();
    assert_eq!(
        live.store().since(mark),
        [
            Write::Backend(0, backend_state::ACTIVE),
            Write::Ring(1),
            Write::Flip(0, 1),
            Write::Sync,
        ]
    );
    assert_eq!(live.store().picks(0).len(), 5, "weights 2, 1, 1, 1");
}

#[test]
fn a_reused_slot_gets_its_address_while_still_removed() {
    let mut live = started(FOUR);
    live.change("dns", &Change::Remove(addr("10.0.0.3:53")))
        .unwrap();
    let mark = live.store().log.len();
    live.change("dns", &Change::Add(addr("10.0.0.9:53"), 1))
        .unwrap();
    // Never-used slots go first: slot 4.
    assert_eq!(
        live.store().since(mark)[0],
        Write::Backend(4, backend_state::ACTIVE)
    );
    // Fill the service up, so only the removed slot 1 is left.
    let more: Vec<BackendSpec> = (0..59)
        .map(|i| BackendSpec {
            addr: SocketAddr::new([10, 1, 0, i].into(), 53),
            weight: 1,
        })
        .chain(live.list("dns").unwrap().iter().map(|b| BackendSpec {
            addr: b.address.parse().unwrap(),
            weight: b.weight,
        }))
        .collect();
    live.change("dns", &Change::Set(more)).unwrap();
    assert_eq!(live.list("dns").unwrap().len(), 63);
    let mark = live.store().log.len();
    live.change("dns", &Change::Add(addr("10.0.0.10:53"), 1))
        .unwrap();
    assert_eq!(live.list("dns").unwrap().len(), 64);
    assert_eq!(
        live.store().since(mark)[..3],
        [
            Write::Backend(1, backend_state::REMOVED),
            Write::Zero(1),
            Write::Backend(1, backend_state::ACTIVE),
        ]
    );
    let err = live
        .change("dns", &Change::Add(addr("10.0.0.11:53"), 1))
        .unwrap_err();
    assert!(err.to_string().contains("at most 64"), "{err}");
    // With every slot in use, a replacement must wait for the old one's removal.
    let mut swapped: Vec<BackendSpec> = live
        .list("dns")
        .unwrap()
        .iter()
        .map(|b| BackendSpec {
            addr: b.address.parse().unwrap(),
            weight: 1,
        })
        .collect();
    swapped[0].addr = addr("10.0.0.11:53");
    let mark = live.store().log.len();
    let err = live.change("dns", &Change::Set(swapped)).unwrap_err();
    assert!(err.to_string().contains("no free backend slot"), "{err}");
    assert!(live.store().since(mark).is_empty(), "nothing written");
}

#[test]
fn re_adding_a_removed_backend_keeps_its_slot_and_counters() {
    let mut live = started(FOUR);
    live.change("dns", &Change::Remove(addr("10.0.0.4:53")))
        .unwrap();
    let mark = live.store().log.len();
    live.change("dns", &Change::Add(addr("10.0.0.4:53"), 1))
        .unwrap();
    let writes = live.store().since(mark);
    assert_eq!(writes[0], Write::Backend(2, backend_state::ACTIVE));
    assert!(!writes.iter().any(|w| matches!(w, Write::Zero(_))));
}

#[test]
fn generations_alternate_with_a_grace_period_between() {
    let mut live = started(FOUR);
    for i in 0..20u8 {
        let b = SocketAddr::new([10, 0, 1, i].into(), 53);
        live.change("dns", &Change::Add(b, (i % 3 + 1) as u32))
            .unwrap();
        live.change("dns", &Change::Drain(b)).unwrap();
        live.change("dns", &Change::Remove(b)).unwrap();
    }
    // The Fake asserts on every write; the set ends where it began.
    assert_eq!(
        live.store().picks(0),
        ["10.0.0.2:53", "10.0.0.3:53", "10.0.0.4:53", "10.0.0.5:53"].map(addr)
    );
}

#[test]
fn weights_shape_the_ring() {
    let live = started(
        r#"{ addr = "10.0.0.2:53", weight = 3 }, "10.0.0.3:53", { addr = "10.0.0.4:53", weight = 0 }"#,
    );
    let picks = live.store().picks(0);
    let count = |a: &str| picks.iter().filter(|&&p| p == addr(a)).count();
    assert_eq!(
        (
            count("10.0.0.2:53"),
            count("10.0.0.3:53"),
            count("10.0.0.4:53")
        ),
        (3, 1, 0)
    );
    let view = live.list("dns").unwrap();
    assert_eq!(view[2].state, "draining");
}

#[test]
fn a_reload_writes_only_the_difference() {
    let mut live = started(FOUR);
    let mark = live.store().log.len();
    let log = live.apply(&one_service(FOUR)).unwrap();
    assert!(log.is_empty(), "{log:?}");
    assert!(live.store().since(mark).is_empty());
    let log = live
        .apply(&one_service(
            r#""10.0.0.2:53", "10.0.0.3:53", "10.0.0.4:53", "10.0.0.6:53""#,
        ))
        .unwrap();
    assert_eq!(log.len(), 1, "{log:?}");
    let writes = live.store().since(mark);
    assert_eq!(
        writes[0],
        Write::Backend(4, backend_state::ACTIVE),
        "only the new one"
    );
    assert!(writes.contains(&Write::Backend(3, backend_state::REMOVED)));
    assert!(!writes.iter().any(|w| matches!(w, Write::Listen(..))));
}

#[test]
fn listens_move_between_services_without_a_gap() {
    let two = |a: &str, b: &str| {
        parse(&format!(
            "interface = \"lo\"\n[[service]]\nname = \"a\"\nlisten = [{a}]\nbackends = [\"10.0.0.2:53\"]\n[[service]]\nname = \"b\"\nlisten = [{b}]\nbackends = [\"10.0.0.3:53\"]\n"
        ))
    };
    let mut live = Live::new(Fake::default());
    live.apply(&two(
        r#""192.0.2.10:53", "192.0.2.11:53""#,
        r#""192.0.2.12:53""#,
    ))
    .unwrap();
    let mark = live.store().log.len();
    live.apply(&two(
        r#""192.0.2.10:53""#,
        r#""192.0.2.11:53", "192.0.2.12:53""#,
    ))
    .unwrap();
    let moved = Endpoint::new(
        xdp_common::ipv4_mapped([192, 0, 2, 11]),
        53u16.to_be_bytes(),
        PROTO_UDP,
    );
    assert_eq!(live.store().since(mark), [Write::Listen(moved, Some(1))]);
    // Dropping service a: its listen goes first, then a grace period, then its backends.
    let only_b = parse(
        "interface = \"lo\"\n[[service]]\nname = \"b\"\nlisten = [\"192.0.2.12:53\"]\nbackends = [\"10.0.0.3:53\"]\n",
    );
    let mark = live.store().log.len();
    let log = live.apply(&only_b).unwrap();
    assert!(log.iter().any(|l| l == "service a: removed"), "{log:?}");
    let writes = live.store().since(mark);
    let first_sync = writes.iter().position(|w| *w == Write::Sync).unwrap();
    assert!(
        writes[..first_sync]
            .iter()
            .all(|w| matches!(w, Write::Listen(_, None)))
    );
    assert_eq!(live.store().listens.len(), 1);
    assert_eq!(live.store().sources.len(), 1);
    assert_eq!(live.names(), ["b"]);
}

#[test]
fn udp_and_tcp_listen_and_sources() {
    let mut live = Live::new(Fake::default());
    live.apply(&parse(
            "interface = \"lo\"\n[[service]]\nname = \"dns\"\nprotocol = \"udp+tcp\"\nlisten = [\"192.0.2.10:53\"]\nbackends = [\"10.0.0.2:53\"]\n",
        ))
        .unwrap();
    assert_eq!(
        (live.store().listens.len(), live.store().sources.len()),
        (2, 2)
    );
    live.apply(&one_service(r#""10.0.0.2:53""#)).unwrap();
    let protos: Vec<u8> = live.store().listens.keys().map(|e| e.proto).collect();
    assert_eq!(protos, [PROTO_UDP]);
    assert_eq!(live.store().sources.len(), 1);
}

/// Both families side by side: one service each, the two wildcards apart,
/// read back whole after a restart; a change may not mix families.
#[test]
fn ipv6_services_and_the_family_rule() {
    let text = r#"interface = "lo"
[[service]]
name = "dns4"
listen = ["*:53", "192.0.2.10:53"]
backends = ["10.0.0.2:53"]
[[service]]
name = "dns6"
protocol = "udp+tcp"
listen = ["[::]:53", "[2001:db8::10]:53"]
backends = ["[2001:db8:13::2]:53", { addr = "[2001:db8:13::3]:53", weight = 2 }]
"#;
    let config = parse(text);
    let mut live = Live::new(Fake::default());
    live.apply(&config).unwrap();
    let endpoint =
        |ip: &str, proto| Endpoint::new(addr_of(ip.parse().unwrap()), 53u16.to_be_bytes(), proto);
    let want: BTreeMap<Endpoint, u32> = [
        (endpoint("0.0.0.0", PROTO_UDP), 0),
        (endpoint("192.0.2.10", PROTO_UDP), 0),
        (endpoint("::", PROTO_UDP), 1),
        (endpoint("::", PROTO_TCP), 1),
        (endpoint("2001:db8::10", PROTO_UDP), 1),
        (endpoint("2001:db8::10", PROTO_TCP), 1),
    ]
    .into();
    assert_eq!(live.store().listens, want);
    assert_eq!(endpoint("0.0.0.0", PROTO_UDP).addr, xdp_common::ANY_IPV4);
    assert_eq!(endpoint("::", PROTO_UDP).addr, xdp_common::ANY_IPV6);
    assert_eq!(
        live.store().picks(1),
        [
            addr("[2001:db8:13::3]:53"),
            addr("[2001:db8:13::2]:53"),
            addr("[2001:db8:13::3]:53")
        ]
    );
    assert!(live.store().sources.contains_key(&Endpoint::new(
        addr_of("2001:db8:13::2".parse().unwrap()),
        53u16.to_be_bytes(),
        PROTO_TCP
    )));

    let mark = live.store().log.len();
    for (service, change, want) in [
        (
            "dns4",
            Change::Add(addr("[2001:db8:13::9]:53"), 1),
            "[2001:db8:13::9]:53 is IPv6, service \"dns4\" is IPv4; a service is one family",
        ),
        (
            "dns6",
            Change::Add(addr("10.0.0.9:53"), 1),
            "10.0.0.9:53 is IPv4, service \"dns6\" is IPv6",
        ),
        (
            "dns6",
            Change::Set(vec![
                BackendSpec {
                    addr: addr("[2001:db8:13::2]:53"),
                    weight: 1,
                },
                BackendSpec {
                    addr: addr("10.0.0.9:53"),
                    weight: 1,
                },
            ]),
            "10.0.0.9:53 is IPv4",
        ),
    ] {
        let err = live.change(service, &change).unwrap_err().to_string();
        assert!(err.contains(want), "{change:?}: {err}");
    }
    assert!(live.store().since(mark).is_empty());
    live.change("dns6", &Change::Add(addr("[2001:db8:13::4]:53"), 1))
        .unwrap();
    live.set_health("dns6", addr("[2001:db8:13::2]:53"), false)
        .unwrap();

    let views = (live.list("dns4").unwrap(), live.list("dns6").unwrap());
    assert_eq!(
        views
            .1
            .iter()
            .map(|v| v.address.as_str())
            .collect::<Vec<_>>(),
        [
            "[2001:db8:13::2]:53",
            "[2001:db8:13::3]:53",
            "[2001:db8:13::4]:53"
        ]
    );
    let mut adopted = restarted(live);
    assert_eq!(
        (adopted.list("dns4").unwrap(), adopted.list("dns6").unwrap()),
        views
    );
    // The family is known again after the restart, from the listen entries read back.
    let err = adopted
        .change("dns6", &Change::Add(addr("10.0.0.9:53"), 1))
        .unwrap_err();
    assert!(err.to_string().contains("is IPv4"), "{err}");
    let lines = adopted.apply(&config).unwrap();
    assert_eq!(
        lines.len(),
        1,
        "only the run-time change is undone: {lines:?}"
    );
    assert!(lines[0].starts_with("service dns6: backends"), "{lines:?}");
}

#[test]
fn bad_changes_change_nothing() {
    let mut live = started(FOUR);
    let mark = live.store().log.len();
    for (change, want) in [
        (Change::Remove(addr("10.0.0.9:53")), "not a backend"),
        (Change::Drain(addr("10.0.0.9:53")), "not a backend"),
        (Change::Add(addr("10.0.0.9:53"), 101), "too large"),
        (
            Change::Set(vec![
                BackendSpec {
                    addr: addr("10.0.0.9:53"),
                    weight: 1,
                },
                BackendSpec {
                    addr: addr("10.0.0.9:53"),
                    weight: 2,
                },
            ]),
            "twice",
        ),
    ] {
        let err = live.change("dns", &change).unwrap_err().to_string();
        assert!(err.contains(want), "{change:?}: {err}");
    }
    let err = live
        .change("nope", &Change::Remove(addr("10.0.0.2:53")))
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("no service \"nope\"; services: dns"),
        "{err}"
    );
    let mut one = started(r#""10.0.0.2:53", { addr = "10.0.0.3:53", weight = 0 }"#);
    for change in [
        Change::Remove(addr("10.0.0.2:53")),
        Change::Drain(addr("10.0.0.2:53")),
        Change::Set(vec![BackendSpec {
            addr: addr("10.0.0.3:53"),
            weight: 0,
        }]),
    ] {
        let err = one.change("dns", &change).unwrap_err().to_string();
        assert!(err.contains("no active backend left"), "{change:?}: {err}");
    }
    assert!(live.store().since(mark).is_empty());
    assert_eq!(
        live.list("").unwrap().len(),
        4,
        "the only service by default"
    );
}

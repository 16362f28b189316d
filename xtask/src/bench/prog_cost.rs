//! What dnsteer's XDP program costs per packet, through BPF_PROG_TEST_RUN, next
//! to the trivial XDP_PASS program measured in the same run (the floor).
//!
//! The program measured is the one `dnsteer run` loaded and attached, with the
//! maps it filled, found by its id on the interface. Two ways of running it:
//!
//! - `repeat`: one call with `repeat` = 1,000,000; the kernel runs the program
//!   over the same buffer and reports the mean. The buffer is not restored
//!   between iterations, so a case must leave it as it found it: a non-matching
//!   packet does, and so does a query to a service whose only backend is the
//!   service address itself (the rewrite writes the same bytes back), which
//!   after its first packet takes the flow-table hit every time.
//! - `single`: one call per packet with repeat = 1 (the kernel's timer then
//!   also counts its own overhead, which is why the floor is measured the same
//!   way). This is the only way to give every packet a new flow: each has a
//!   source address and port of its own, so each misses the flow table, picks a
//!   backend and writes two records; past 32,768 flows the default 65,536-record
//!   LRU table is full and every insert evicts, as on a busy node.
//!
//! Every case checks dnsteer's own counters moved as intended, so a case that
//! did not do what its name says fails the bench instead of reporting numbers.

use std::{borrow::Cow, net::Ipv4Addr, time::Instant};

use anyhow::{Context as _, Result, bail, ensure};
use aya::programs::{ProgramInfo, TestRun, TestRunOptions, Xdp, loaded_programs};
use aya_obj::programs::XdpAttachType;
use serde::{Deserialize, Serialize};
use testbed::{NetNs, dnsteer::Dnsteer};

use super::{load::percentile, setup::xdp_prog_id};

const IFACE: &str = "pc0";
const XDP_PASS: u32 = 2;
const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 100);
const SERVICE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
/// A service whose one backend is its own address and port.
const SELF_SERVICE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 20);
const OTHER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 99);

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Case {
    pub name: String,
    pub program: String,
    /// `repeat` or `single` (see the module docs).
    pub mode: String,
    /// Packets run.
    pub packets: u64,
    /// The kernel's figure: for `repeat`, its mean (whole ns); for `single`,
    /// the mean of the per-call figures.
    pub ns_per_packet: f64,
    /// `single` only: the median per-call figure.
    pub median_ns: Option<f64>,
    /// `repeat` only: wall time of the call divided by `repeat` (includes one
    /// syscall and one packet copy, spread over the repeats).
    pub wall_ns_per_packet: Option<f64>,
    pub checked: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProgCost {
    pub repeat: u32,
    pub single_packets: u32,
    pub cases: Vec<Case>,
    /// Cases that could not run, with the reason.
    pub skipped: Vec<(String, String)>,
}

/// An Ethernet + IPv4 + UDP frame carrying a DNS query for whoami.example. A,
/// with both checksums computed from scratch.
pub fn query_frame(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    const DNS: &[u8] = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x06whoami\x07example\x00\x00\x01\x00\x01";
    let udp_len = 8 + DNS.len();
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x08, 0x00];
    let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0];
    ip[2..4].copy_from_slice(&((20 + udp_len) as u16).to_be_bytes());
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let check = !fold(sum(0, &ip));
    ip[10..12].copy_from_slice(&check.to_be_bytes());
    let mut udp = Vec::with_capacity(udp_len);
    udp.extend_from_slice(&sport.to_be_bytes());
    udp.extend_from_slice(&dport.to_be_bytes());
    udp.extend_from_slice(&(udp_len as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(DNS);
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&(udp_len as u16).to_be_bytes());
    let check = match !fold(sum(sum(0, &pseudo), &udp)) {
        0 => 0xffff,
        c => c,
    };
    udp[6..8].copy_from_slice(&check.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&udp);
    f
}

fn sum(mut acc: u32, data: &[u8]) -> u32 {
    for chunk in data.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], chunk.get(1).copied().unwrap_or(0)]);
        acc += u32::from(word);
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// dnsteer's counters that tell what a case did.
#[derive(Debug, Clone, Copy, Default)]
struct Counters {
    steered: u64,
    not_service: u64,
    hits: u64,
    misses: u64,
}

fn counters(dnsteer: &Dnsteer) -> Result<Counters> {
    let json: serde_json::Value = serde_json::from_str(&dnsteer.stats(&["--json"])?)?;
    let n = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
    Ok(Counters {
        steered: n(&json["reasons"]["steered"]),
        not_service: n(&json["reasons"]["not_service"]),
        hits: n(&json["flows"]["hits"]),
        misses: n(&json["flows"]["misses"]),
    })
}

fn run_once(prog: &Xdp, frame: &[u8], repeat: u32) -> Result<(f64, f64)> {
    let opts = TestRunOptions {
        data_in: Some(frame),
        repeat,
        ..Default::default()
    };
    let start = Instant::now();
    let result = prog.test_run(opts).context("BPF_PROG_TEST_RUN")?;
    let wall = start.elapsed().as_secs_f64() * 1e9 / f64::from(repeat);
    ensure!(
        result.return_value == XDP_PASS,
        "the program returned {} instead of XDP_PASS",
        result.return_value
    );
    Ok((result.duration.as_nanos() as f64, wall))
}

fn repeat_case(name: &str, program: &str, prog: &Xdp, frame: &[u8], repeat: u32) -> Result<Case> {
    let (ns, wall) = run_once(prog, frame, repeat)?;
    Ok(Case {
        name: name.to_owned(),
        program: program.to_owned(),
        mode: "repeat".to_owned(),
        packets: u64::from(repeat),
        ns_per_packet: ns,
        median_ns: None,
        wall_ns_per_packet: Some(wall),
        checked: String::new(),
    })
}

fn single_case(
    name: &str,
    program: &str,
    prog: &Xdp,
    packets: u32,
    frame: impl Fn(u32) -> Vec<u8>,
) -> Result<Case> {
    let mut each = Vec::with_capacity(packets as usize);
    for i in 0..packets {
        each.push(run_once(prog, &frame(i), 1)?.0);
    }
    let mean = each.iter().sum::<f64>() / f64::from(packets.max(1));
    each.sort_by(f64::total_cmp);
    Ok(Case {
        name: name.to_owned(),
        program: program.to_owned(),
        mode: "single".to_owned(),
        packets: u64::from(packets),
        ns_per_packet: mean,
        median_ns: percentile(&each, 0.5),
        wall_ns_per_packet: None,
        checked: String::new(),
    })
}

/// The XDP program `dnsteer run` attached to `iface` in `ns`.
fn attached_program(ns: &NetNs) -> Result<Xdp> {
    let id = xdp_prog_id(ns, IFACE)?;
    let info: ProgramInfo = loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == id)
        .with_context(|| format!("program {id} is not loaded"))?;
    Ok(Xdp::from_program_info(
        info,
        Cow::Borrowed(dnsteer_lib_name()),
        XdpAttachType::Interface,
    )?)
}

fn dnsteer_lib_name() -> &'static str {
    "dnsteer_steer"
}

fn config(with_self: bool) -> String {
    let mut config = format!(
        "interface = \"{IFACE}\"\n\n[[service]]\nname = \"dns\"\nlisten = [\"{SERVICE}:53\"]\nselect = \"nth\"\n\
         backends = [\"10.100.13.2:53\", \"10.100.13.3:53\", \"10.100.13.4:53\", \"10.100.13.5:53\"]\n"
    );
    if with_self {
        config.push_str(&format!(
            "\n[[service]]\nname = \"self\"\nlisten = [\"{SELF_SERVICE}:53\"]\nbackends = [\"{SELF_SERVICE}:53\"]\n"
        ));
    }
    config
}

/// Measures every case; `floor` is the bench's XDP_PASS program, loaded.
pub fn measure(
    dnsteer_bin: &std::path::Path,
    floor: &Xdp,
    repeat: u32,
    single_packets: u32,
    progress: &dyn Fn(&str),
) -> Result<ProgCost> {
    let ns = NetNs::new("progcost")?;
    ns.run(&[
        "ip", "link", "add", IFACE, "type", "veth", "peer", "name", "pc1",
    ])?;
    ns.run(&["ip", "link", "set", IFACE, "up"])?;
    ns.run(&["ip", "link", "set", "pc1", "up"])?;
    let mut skipped = Vec::new();
    let (dnsteer, with_self) = match Dnsteer::start(&ns, dnsteer_bin, IFACE, &config(true)) {
        Ok(d) => (d, true),
        Err(e) => {
            skipped.push((
                "flow hit (repeat)".to_owned(),
                format!("dnsteer refused a service whose backend is its own address: {e:#}"),
            ));
            (
                Dnsteer::start(&ns, dnsteer_bin, IFACE, &config(false))?,
                false,
            )
        }
    };
    let prog = attached_program(&ns)?;
    let query = query_frame(CLIENT, 40000, SERVICE, 53);
    let other = query_frame(CLIENT, 40000, OTHER, 53);
    let mut cases = Vec::new();

    progress(&format!(
        "floor ({}) with repeat {repeat}",
        super::setup::PASS_PROGRAM
    ));
    let mut floor_case = repeat_case("floor", super::setup::PASS_PROGRAM, floor, &query, repeat)?;
    floor_case.checked = "returns XDP_PASS".to_owned();
    cases.push(floor_case);

    progress(&format!("non-matching packet with repeat {repeat}"));
    let before = counters(&dnsteer)?;
    let mut case = repeat_case("non-matching", dnsteer_lib_name(), &prog, &other, repeat)?;
    let after = counters(&dnsteer)?;
    let moved = after.not_service - before.not_service;
    ensure!(
        moved == u64::from(repeat),
        "non-matching: not_service moved by {moved}, not {repeat}"
    );
    case.checked = format!("not_service +{moved}");
    cases.push(case);

    if with_self {
        progress(&format!("flow-table hit with repeat {repeat}"));
        let hit = query_frame(CLIENT, 40001, SELF_SERVICE, 53);
        run_once(&prog, &hit, 1)?; // makes the flow
        let before = counters(&dnsteer)?;
        let mut case = repeat_case("flow hit", dnsteer_lib_name(), &prog, &hit, repeat)?;
        let after = counters(&dnsteer)?;
        let (steered, hits) = (after.steered - before.steered, after.hits - before.hits);
        if steered != u64::from(repeat) || hits != u64::from(repeat) {
            bail!("flow hit: steered +{steered}, hits +{hits}, want {repeat} each");
        }
        case.checked = format!("steered +{steered}, flow hits +{hits}");
        cases.push(case);
    }

    progress(&format!("single runs: floor, {single_packets} packets"));
    let mut case = single_case(
        "floor",
        super::setup::PASS_PROGRAM,
        floor,
        single_packets,
        |_| query.clone(),
    )?;
    case.checked = "returns XDP_PASS".to_owned();
    cases.push(case);

    progress(&format!(
        "single runs: matching query, a new flow each, {single_packets} packets"
    ));
    let before = counters(&dnsteer)?;
    let mut case = single_case(
        "matching query, new flow",
        dnsteer_lib_name(),
        &prog,
        single_packets,
        |i| {
            // A source address per 50,000 ports: no 5-tuple twice.
            let src = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + i / 50_000);
            query_frame(src, 10_000 + (i % 50_000) as u16, SERVICE, 53)
        },
    )?;
    let after = counters(&dnsteer)?;
    let (steered, misses) = (after.steered - before.steered, after.misses - before.misses);
    ensure!(
        steered == u64::from(single_packets) && misses == u64::from(single_packets),
        "new flows: steered +{steered}, misses +{misses}, want {single_packets} each"
    );
    case.checked = format!("steered +{steered}, flow misses +{misses}");
    cases.push(case);

    progress(&format!(
        "single runs: matching query, flow hit, {single_packets} packets"
    ));
    run_once(&prog, &query, 1)?; // the flow of this client port
    let before = counters(&dnsteer)?;
    let mut case = single_case(
        "matching query, flow hit",
        dnsteer_lib_name(),
        &prog,
        single_packets,
        |_| query.clone(),
    )?;
    let after = counters(&dnsteer)?;
    let (steered, hits) = (after.steered - before.steered, after.hits - before.hits);
    ensure!(
        steered == u64::from(single_packets) && hits == u64::from(single_packets),
        "flow hits: steered +{steered}, hits +{hits}, want {single_packets} each"
    );
    case.checked = format!("steered +{steered}, flow hits +{hits}");
    cases.push(case);

    progress(&format!(
        "single runs: non-matching packet, {single_packets} packets"
    ));
    let mut case = single_case(
        "non-matching",
        dnsteer_lib_name(),
        &prog,
        single_packets,
        |_| other.clone(),
    )?;
    case.checked = "XDP_PASS".to_owned();
    cases.push(case);

    drop(prog);
    let mut dnsteer = dnsteer;
    dnsteer.stop()?;
    Ok(ProgCost {
        repeat,
        single_packets,
        cases,
        skipped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_have_valid_checksums() {
        let f = query_frame(CLIENT, 40000, SERVICE, 53);
        assert_eq!(fold(sum(0, &f[14..34])), 0xffff, "IPv4 header sum");
        let udp = &f[34..];
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&CLIENT.octets());
        pseudo.extend_from_slice(&SERVICE.octets());
        pseudo.extend_from_slice(&[0, 17]);
        pseudo.extend_from_slice(&(udp.len() as u16).to_be_bytes());
        assert_eq!(fold(sum(sum(0, &pseudo), udp)), 0xffff, "UDP sum");
    }
}

//! What dnsteer's programs cost per packet, through BPF_PROG_TEST_RUN, next
//! to the trivial XDP_PASS program measured in the same run (the floor).
//!
//! The programs measured are the ones `dnsteer run` loaded and attached, with
//! the maps it filled: the XDP program found by its id on the interface, the
//! TC reply program by its name among the programs sharing its maps. Two ways
//! of running them:
//!
//! - `repeat`: one call with `repeat` = 1,000,000; the kernel runs the program
//!   over the same buffer and reports the mean. The buffer is not restored
//!   between iterations, so a case must leave it as it found it: a non-matching
//!   packet does, and so does a query to a service whose only backend is the
//!   service address itself (the rewrite writes the same bytes back), which
//!   after its first packet follows its flow's affinity record every time; its
//!   query's record is there already too (the same DNS ID: a retransmission).
//! - `single`: one call per packet with repeat = 1 (the kernel's timer then
//!   also counts its own overhead, which is why the floor is measured the same
//!   way). This is how every packet gets a state of its own: a new query from
//!   a source address and port of its own (a new flow: affinity miss, a pick,
//!   an affinity record and a query record written), or a new DNS ID on the
//!   same port (a flow hit: the affinity record followed, a query record
//!   written). After each query its answer runs through the TC reply program
//!   (timed as `reply`), which consumes the record, so the query table holds
//!   one query in flight, as it does when backends answer.
//!
//! Every case checks dnsteer's own counters moved as intended, so a case that
//! did not do what its name says fails the bench instead of reporting numbers.

use std::{borrow::Cow, net::Ipv4Addr, time::Instant};

use anyhow::{Context as _, Result, bail, ensure};
use aya::programs::{ProgramInfo, SchedClassifier, TestRun, TestRunOptions, Xdp, loaded_programs};
use aya_obj::programs::XdpAttachType;
use serde::{Deserialize, Serialize};
use testbed::{NetNs, dnsteer::Dnsteer};

use super::{load::percentile, setup::xdp_prog_id};

const IFACE: &str = "pc0";
const XDP_PASS: u32 = 2;
const TC_ACT_OK: u32 = 0;
const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 100);
const SERVICE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
/// A service whose one backend is its own address and port.
const SELF_SERVICE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 20);
const OTHER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 99);
/// The same backends as SERVICE, picked by least_outstanding.
const LEAST: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 30);
/// Frames the attached program may see from the interface itself during a case.
const STRAY: u64 = 10;

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
    /// The share of the machine busy with other work in the second before
    /// the runs (the bench waits a while for a quiet one).
    #[serde(default)]
    pub busy_before: Option<f64>,
}

/// An Ethernet + IPv4 + UDP frame carrying a DNS query for whoami.example. A,
/// with both checksums computed from scratch.
pub fn query_frame(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    query_frame_with_id(src, sport, dst, dport, 0x1234)
}

/// The same with DNS message ID `id`.
pub fn query_frame_with_id(
    src: Ipv4Addr,
    sport: u16,
    dst: Ipv4Addr,
    dport: u16,
    id: u16,
) -> Vec<u8> {
    let mut dns = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x06whoami\x07example\x00\x00\x01\x00\x01".to_vec();
    dns[..2].copy_from_slice(&id.to_be_bytes());
    let udp_len = 8 + dns.len();
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
    udp.extend_from_slice(&dns);
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
    reply_rewritten: u64,
    queries_inserted: u64,
    queries_answered: u64,
}

impl Counters {
    /// How far each counter moved since `before`.
    fn since(self, before: Counters) -> Counters {
        Counters {
            steered: self.steered - before.steered,
            not_service: self.not_service - before.not_service,
            hits: self.hits - before.hits,
            misses: self.misses - before.misses,
            reply_rewritten: self.reply_rewritten - before.reply_rewritten,
            queries_inserted: self.queries_inserted - before.queries_inserted,
            queries_answered: self.queries_answered - before.queries_answered,
        }
    }

    /// That each of `n` queries was steered, took its flow's record (`hit`)
    /// or started a flow, and wrote its query's record; what moved, for the
    /// report.
    fn check_queries(&self, what: &str, n: u64, hit: bool) -> Result<String> {
        let (flow, flows) = if hit {
            ("flow hits", self.hits)
        } else {
            ("flow misses", self.misses)
        };
        let moved = format!(
            "steered +{}, {flow} +{flows}, query records +{}",
            self.steered, self.queries_inserted
        );
        ensure!(
            self.steered == n && flows == n && self.queries_inserted == n,
            "{what}: {moved}, want {n} each"
        );
        Ok(moved)
    }

    /// That each of `n` answers was translated and consumed its query's record.
    fn check_replies(&self, what: &str, n: u64) -> Result<String> {
        let moved = format!(
            "reply_rewritten +{}, query records consumed +{}",
            self.reply_rewritten, self.queries_answered
        );
        ensure!(
            self.reply_rewritten == n && self.queries_answered == n,
            "{what}: {moved}, want {n} each"
        );
        Ok(moved)
    }
}

/// Query `i` of a run of new flows to `dst`: a source address per 50,000
/// ports from `base` on, so no 5-tuple comes twice.
fn new_flow_frame(base: Ipv4Addr, dst: Ipv4Addr, i: u32) -> Vec<u8> {
    let src = Ipv4Addr::from(u32::from(base) + i / 50_000);
    query_frame(src, 10_000 + (i % 50_000) as u16, dst, 53)
}

fn counters(dnsteer: &Dnsteer) -> Result<Counters> {
    let json: serde_json::Value = serde_json::from_str(&dnsteer.stats(&["--json"])?)?;
    let n = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
    Ok(Counters {
        steered: n(&json["reasons"]["steered"]),
        not_service: n(&json["reasons"]["not_service"]),
        hits: n(&json["flows"]["hits"]),
        misses: n(&json["flows"]["misses"]),
        reply_rewritten: n(&json["reasons"]["reply_rewritten"]),
        queries_inserted: n(&json["queries"]["inserted"]),
        queries_answered: n(&json["queries"]["answered"]),
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

/// Runs `frame`'s query through the XDP program, then its answer (the output
/// turned around: from the backend to the client) through the TC reply
/// program; the kernel's figures for each.
fn query_then_answer(prog: &Xdp, reply: &SchedClassifier, frame: &[u8]) -> Result<(f64, f64)> {
    let mut out = vec![0u8; frame.len() + 256];
    let result = prog
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ..Default::default()
        })
        .context("BPF_PROG_TEST_RUN (query)")?;
    ensure!(
        result.return_value == XDP_PASS,
        "the query: the program returned {} instead of XDP_PASS",
        result.return_value
    );
    out.truncate(result.data_size_out as usize);
    let query_ns = result.duration.as_nanos() as f64;
    // Untagged IPv4 without options: addresses at 26 and 30, ports at 34 and
    // 36. Swapping them keeps both checksums valid.
    let answer = {
        let mut a = out;
        let (src, dst) = (a[26..30].to_vec(), a[30..34].to_vec());
        a[26..30].copy_from_slice(&dst);
        a[30..34].copy_from_slice(&src);
        let (sport, dport) = (a[34..36].to_vec(), a[36..38].to_vec());
        a[34..36].copy_from_slice(&dport);
        a[36..38].copy_from_slice(&sport);
        a
    };
    let result = reply
        .test_run(TestRunOptions {
            data_in: Some(&answer),
            ..Default::default()
        })
        .context("BPF_PROG_TEST_RUN (answer)")?;
    ensure!(
        result.return_value == TC_ACT_OK,
        "the answer: the reply program returned {} instead of TC_ACT_OK",
        result.return_value
    );
    Ok((query_ns, result.duration.as_nanos() as f64))
}

/// `packets` queries, each followed by its answer: the query case and the reply case.
fn query_and_reply(
    name: &str,
    prog: &Xdp,
    reply: &SchedClassifier,
    packets: u32,
    frame: impl Fn(u32) -> Vec<u8>,
) -> Result<(Case, Case)> {
    let (mut queries, mut replies) = (Vec::new(), Vec::new());
    for i in 0..packets {
        let (q, r) = query_then_answer(prog, reply, &frame(i))?;
        queries.push(q);
        replies.push(r);
    }
    Ok((
        single_from(name, dnsteer_lib_name(), queries),
        single_from("reply", REPLY_PROGRAM, replies),
    ))
}

/// A `single` case from its per-call figures.
fn single_from(name: &str, program: &str, mut each: Vec<f64>) -> Case {
    let mean = each.iter().sum::<f64>() / (each.len().max(1) as f64);
    each.sort_by(f64::total_cmp);
    Case {
        name: name.to_owned(),
        program: program.to_owned(),
        mode: "single".to_owned(),
        packets: each.len() as u64,
        ns_per_packet: mean,
        median_ns: percentile(&each, 0.5),
        wall_ns_per_packet: None,
        checked: String::new(),
    }
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
    Ok(single_from(name, program, each))
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

/// The TC reply program's name, as the kernel keeps it.
const REPLY_PROGRAM: &str = "dnsteer_reply";

/// The TC reply program of the `dnsteer run` in `ns`: the one of that name
/// that shares a map with the XDP program attached there.
fn reply_program(ns: &NetNs) -> Result<SchedClassifier> {
    let id = xdp_prog_id(ns, IFACE)?;
    let programs: Vec<ProgramInfo> = loaded_programs().filter_map(Result::ok).collect();
    let maps = programs
        .iter()
        .find(|p| p.id() == id)
        .with_context(|| format!("program {id} is not loaded"))?
        .map_ids()?
        .unwrap_or_default();
    let info = programs
        .into_iter()
        .find(|p| {
            p.name_as_str() == Some(REPLY_PROGRAM)
                && p.map_ids()
                    .ok()
                    .flatten()
                    .is_some_and(|ids| ids.iter().any(|m| maps.contains(m)))
        })
        .with_context(|| format!("no {REPLY_PROGRAM} program shares the maps of program {id}"))?;
    Ok(SchedClassifier::from_program_info(
        info,
        Cow::Borrowed(REPLY_PROGRAM),
    )?)
}

fn config(with_self: bool) -> String {
    let mut config = format!(
        "interface = \"{IFACE}\"\n\n[[service]]\nname = \"dns\"\nlisten = [\"{SERVICE}:53\"]\nselect = \"nth\"\n\
         backends = [\"10.100.13.2:53\", \"10.100.13.3:53\", \"10.100.13.4:53\", \"10.100.13.5:53\"]\n"
    );
    config.push_str(&format!(
        "\n[[service]]\nname = \"least\"\nlisten = [\"{LEAST}:53\"]\nselect = \"least_outstanding\"\n\
         backends = [\"10.100.13.2:53\", \"10.100.13.3:53\", \"10.100.13.4:53\", \"10.100.13.5:53\"]\n"
    ));
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
    // No IPv6 on the pair: neighbour and multicast listener messages would
    // reach the attached program and move its counters during a case.
    ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
    ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1")?;
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
                "query, flow hit, same ID (repeat)".to_owned(),
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
    // The program is attached too, so a stray frame on the interface may add one.
    let moved = after.not_service - before.not_service;
    ensure!(
        (u64::from(repeat)..=u64::from(repeat) + STRAY).contains(&moved),
        "non-matching: not_service moved by {moved}, not {repeat}"
    );
    case.checked = format!("not_service +{moved}");
    cases.push(case);

    if with_self {
        progress(&format!("flow-table hit with repeat {repeat}"));
        let hit = query_frame(CLIENT, 40001, SELF_SERVICE, 53);
        run_once(&prog, &hit, 1)?; // makes the flow
        let before = counters(&dnsteer)?;
        let mut case = repeat_case(
            "query, flow hit, same ID",
            dnsteer_lib_name(),
            &prog,
            &hit,
            repeat,
        )?;
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

    let reply = reply_program(&ns)?;
    progress(&format!(
        "single runs: new query (a new flow each) and its reply, {single_packets} packets"
    ));
    let n = u64::from(single_packets);
    let before = counters(&dnsteer)?;
    let (mut case, mut reply_case) =
        query_and_reply("new query", &prog, &reply, single_packets, |i| {
            new_flow_frame(Ipv4Addr::new(198, 18, 0, 0), SERVICE, i)
        })?;
    let moved = counters(&dnsteer)?.since(before);
    case.checked = moved.check_queries("new queries", n, false)?;
    reply_case.name = "reply to a new query".to_owned();
    reply_case.checked = moved.check_replies("replies to new queries", n)?;
    cases.push(case);
    cases.push(reply_case);

    progress(&format!(
        "single runs: new query to a least_outstanding service and its reply, {single_packets} packets"
    ));
    let before = counters(&dnsteer)?;
    let (mut case, _) = query_and_reply(
        "new query, least_outstanding",
        &prog,
        &reply,
        single_packets,
        |i| new_flow_frame(Ipv4Addr::new(198, 19, 0, 0), LEAST, i),
    )?;
    case.checked =
        counters(&dnsteer)?
            .since(before)
            .check_queries("least_outstanding", n, false)?;
    cases.push(case);

    progress(&format!(
        "single runs: query on a known flow (a new DNS ID each) and its reply, {single_packets} packets"
    ));
    // The flow of this client port, its query answered.
    query_then_answer(&prog, &reply, &query)?;
    let before = counters(&dnsteer)?;
    let (mut case, mut reply_case) =
        query_and_reply("query, flow hit", &prog, &reply, single_packets, |i| {
            query_frame_with_id(CLIENT, 40000, SERVICE, 53, (i % 65_536) as u16)
        })?;
    let moved = counters(&dnsteer)?.since(before);
    case.checked = moved.check_queries("flow hits", n, true)?;
    reply_case.name = "reply".to_owned();
    reply_case.checked = moved.check_replies("replies", n)?;
    cases.push(case);
    cases.push(reply_case);

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
        busy_before: None,
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

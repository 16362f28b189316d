//! The kernel programs run through BPF_PROG_TEST_RUN, not attached anywhere: a
//! table of input packets, the action expected and the packet expected out.
//! Needs root (loading BPF programs); no namespaces, no traffic.

use std::{net::Ipv4Addr, path::Path};

use aya::{
    Ebpf,
    maps::{Array, HashMap, PerCpuArray},
    programs::{SchedClassifier, TestRun, TestRunOptions, Xdp},
};
use dnsteer::{TC_PROGRAM, XDP_PROGRAM, config, maps::Plan};
use xdp_common::{Endpoint, Reason, ServiceConf, csum, names};

const XDP_PASS: u32 = 2;
const TC_ACT_OK: u32 = 0;

const CONFIG: &str = r#"
interface = "lo"
[[service]]
name = "dns"
listen = ["192.0.2.10:53", "192.0.2.11:53"]
select = "nth"
backends = ["10.100.13.2:53", "10.100.13.3:53", "10.100.13.4:53", "10.100.13.5:53"]

[[service]]
name = "anycast"
listen = ["*:5300"]
backends = ["10.100.14.9:5353"]

[[service]]
name = "rand"
listen = ["192.0.2.20:53"]
select = "random"
backends = ["10.100.15.2:53", "10.100.15.3:53", "10.100.15.4:53", "10.100.15.5:53"]
"#;

/// A frame under construction: Ethernet, VLAN tags, IPv4 (+options), UDP/TCP.
#[derive(Clone)]
struct Pkt {
    tags: Vec<u16>,
    ethertype: u16,
    options: usize,
    proto: u8,
    frag: u16,
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    zero_udp_csum: bool,
    payload: Vec<u8>,
}

fn query(dst: [u8; 4], dport: u16) -> Pkt {
    Pkt {
        tags: vec![],
        ethertype: 0x0800,
        options: 0,
        proto: 17,
        frag: 0x4000, // DF
        src: [192, 0, 2, 100],
        dst,
        sport: 40000,
        dport,
        zero_udp_csum: false,
        // A DNS query for whoami.example. A; the program never reads it.
        payload: b"\xab\xcd\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x06whoami\x07example\x00\x00\x01\x00\x01".to_vec(),
    }
}

impl Pkt {
    /// Serializes with correct checksums computed from scratch.
    fn bytes(&self) -> Vec<u8> {
        let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
        for tpid in &self.tags {
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&[0, 100]);
        }
        f.extend_from_slice(&self.ethertype.to_be_bytes());
        let l3 = f.len();
        let ihl = 20 + self.options;
        let l4_len = 8 + self.payload.len();
        f.push(0x40 | (ihl / 4) as u8);
        f.push(0);
        f.extend_from_slice(&((ihl + l4_len) as u16).to_be_bytes());
        f.extend_from_slice(&[0x12, 0x34]);
        f.extend_from_slice(&self.frag.to_be_bytes());
        f.extend_from_slice(&[64, self.proto, 0, 0]);
        f.extend_from_slice(&self.src);
        f.extend_from_slice(&self.dst);
        f.extend(std::iter::repeat_n(1u8, self.options));
        let ip_csum = csum::ipv4_header(&f[l3..l3 + ihl]);
        f[l3 + 10..l3 + 12].copy_from_slice(&ip_csum.to_be_bytes());
        let l4 = f.len();
        f.extend_from_slice(&self.sport.to_be_bytes());
        f.extend_from_slice(&self.dport.to_be_bytes());
        f.extend_from_slice(&(l4_len as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(&self.payload);
        if self.proto == 17 && !self.zero_udp_csum {
            let c = match csum::udp(self.src, self.dst, &f[l4..]) {
                0 => 0xffff,
                c => c,
            };
            f[l4 + 6..l4 + 8].copy_from_slice(&c.to_be_bytes());
        }
        f
    }

    fn to(mut self, dst: [u8; 4], dport: u16) -> Self {
        (self.dst, self.dport) = (dst, dport);
        self
    }

    fn from(mut self, src: [u8; 4], sport: u16) -> Self {
        (self.src, self.sport) = (src, sport);
        self
    }
}

/// What a case expects out of the program.
enum Out {
    Unchanged,
    /// Exactly this packet (checksums computed from scratch).
    Packet(Vec<u8>),
}

struct Case {
    what: &'static str,
    input: Vec<u8>,
    action: u32,
    out: Out,
    reason: Option<Reason>,
}

fn case(what: &'static str, input: Vec<u8>, out: Out, reason: Option<Reason>) -> Case {
    Case {
        what,
        input,
        action: XDP_PASS,
        out,
        reason,
    }
}

struct Loaded {
    ebpf: Ebpf,
}

impl Loaded {
    fn new() -> Self {
        let config = config::parse(CONFIG, Path::new("prog_table.toml")).expect("test config");
        let mut ebpf = Ebpf::load(dnsteer::EBPF_OBJECT).expect("loading the object (run as root)");
        Plan::new(&config).apply(&mut ebpf).expect("filling maps");
        let xdp: &mut Xdp = ebpf.program_mut(XDP_PROGRAM).unwrap().try_into().unwrap();
        xdp.load().expect("verifier accepts the XDP program");
        let tc: &mut SchedClassifier = ebpf.program_mut(TC_PROGRAM).unwrap().try_into().unwrap();
        tc.load().expect("verifier accepts the TC program");
        Loaded { ebpf }
    }

    fn reasons(&self) -> Vec<u64> {
        let map: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.ebpf.map(names::REASONS).unwrap()).unwrap();
        Reason::ALL
            .iter()
            .map(|r| map.get(&(*r as u32), 0).unwrap().iter().sum())
            .collect()
    }

    fn run(&self, program: &str, input: &[u8]) -> (u32, Vec<u8>) {
        let mut out = vec![0u8; input.len() + 256];
        let opts = TestRunOptions {
            data_in: Some(input),
            data_out: Some(&mut out),
            ..Default::default()
        };
        let result = match program {
            XDP_PROGRAM => {
                let p: &Xdp = self.ebpf.program(program).unwrap().try_into().unwrap();
                p.test_run(opts)
            }
            _ => {
                let p: &SchedClassifier = self.ebpf.program(program).unwrap().try_into().unwrap();
                p.test_run(opts)
            }
        }
        .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN of {program}: {e}"));
        out.truncate(result.data_size_out as usize);
        (result.return_value, out)
    }

    fn check(&self, program: &str, cases: &[Case]) {
        for c in cases {
            let before = self.reasons();
            let (action, out) = self.run(program, &c.input);
            assert_eq!(action, c.action, "{}: action", c.what);
            match &c.out {
                Out::Unchanged => {
                    assert_eq!(out, c.input, "{}: packet must pass untouched", c.what)
                }
                Out::Packet(want) => assert_eq!(&out, want, "{}: output packet", c.what),
            }
            let after = self.reasons();
            let moved: Vec<Reason> = Reason::ALL
                .iter()
                .zip(before.iter().zip(&after))
                .filter(|(_, (b, a))| a != b)
                .map(|(r, _)| *r)
                .collect();
            assert_eq!(
                moved,
                c.reason.into_iter().collect::<Vec<_>>(),
                "{}: counters",
                c.what
            );
            let bumped: u64 = after.iter().zip(&before).map(|(a, b)| a - b).sum();
            assert_eq!(
                bumped,
                c.reason.map_or(0, |_| 1),
                "{}: exactly one counter, once",
                c.what
            );
        }
    }
}

/// Keeps this thread on one CPU, so per-CPU nth state is one sequence.
fn pin_to_cpu0() {
    // SAFETY: a zeroed cpu_set_t with one bit set, for the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set),
            0
        );
    }
}

const VIP: [u8; 4] = [192, 0, 2, 10];
const ALIAS: [u8; 4] = [192, 0, 2, 11];
const B: [[u8; 4]; 4] = [
    [10, 100, 13, 2],
    [10, 100, 13, 3],
    [10, 100, 13, 4],
    [10, 100, 13, 5],
];

#[test]
fn xdp_table() {
    pin_to_cpu0();
    let prog = Loaded::new();
    let q = || query(VIP, 53);
    let steered = |p: Pkt, dst: [u8; 4], dport: u16| Out::Packet(p.to(dst, dport).bytes());
    let truncated = |p: Pkt, len: usize| p.bytes()[..len].to_vec();
    let mut tcp = q();
    tcp.proto = 6;
    let mut ipv6 = q();
    ipv6.ethertype = 0x86dd;
    let mut opts = q();
    opts.options = 12;
    let mut vlan = q();
    vlan.tags = vec![0x8100];
    let mut qinq = q();
    qinq.tags = vec![0x88a8, 0x8100];
    let mut mf = q();
    mf.frag = 0x2000;
    let mut offset = q();
    offset.frag = 0x0010;
    let mut nosum = q();
    nosum.zero_udp_csum = true;
    let wild = query([198, 51, 100, 7], 5300);

    // The nth cursor starts at backend 0 and advances only on steered packets.
    let cases = [
        case(
            "query to the service address",
            q().bytes(),
            steered(q(), B[0], 53),
            Some(Reason::Steered),
        ),
        case(
            "query to the alias address",
            query(ALIAS, 53).bytes(),
            steered(query(ALIAS, 53), B[1], 53),
            Some(Reason::Steered),
        ),
        case(
            "other address",
            query([192, 0, 2, 99], 53).bytes(),
            Out::Unchanged,
            Some(Reason::NotService),
        ),
        case(
            "other port",
            query(VIP, 54).bytes(),
            Out::Unchanged,
            Some(Reason::NotService),
        ),
        case(
            "TCP to :53",
            tcp.bytes(),
            Out::Unchanged,
            Some(Reason::NotService),
        ),
        case(
            "IPv6 ethertype",
            ipv6.bytes(),
            Out::Unchanged,
            Some(Reason::NotService),
        ),
        case(
            "multicast destination",
            query([224, 0, 0, 53], 53).bytes(),
            Out::Unchanged,
            Some(Reason::NotService),
        ),
        // BPF_PROG_TEST_RUN refuses frames shorter than an Ethernet header, so that
        // cut is covered by xdp-common's parser tests only.
        case(
            "runt: Ethernet header only",
            truncated(q(), 14),
            Out::Unchanged,
            Some(Reason::Malformed),
        ),
        case(
            "truncated VLAN tag",
            truncated(vlan.clone(), 17),
            Out::Unchanged,
            Some(Reason::Malformed),
        ),
        case(
            "truncated IPv4 header",
            truncated(q(), 33),
            Out::Unchanged,
            Some(Reason::Malformed),
        ),
        case(
            "truncated IPv4 options",
            truncated(opts.clone(), 40),
            Out::Unchanged,
            Some(Reason::Malformed),
        ),
        case(
            "truncated UDP header",
            truncated(q(), 41),
            Out::Unchanged,
            Some(Reason::Malformed),
        ),
        case(
            "IPv4 options",
            opts.bytes(),
            steered(opts.clone(), B[2], 53),
            Some(Reason::Steered),
        ),
        case(
            "802.1Q tag",
            vlan.bytes(),
            steered(vlan.clone(), B[3], 53),
            Some(Reason::Steered),
        ),
        case(
            "QinQ tags",
            qinq.bytes(),
            steered(qinq.clone(), B[0], 53),
            Some(Reason::Steered),
        ),
        case(
            "more-fragments set",
            mf.bytes(),
            Out::Unchanged,
            Some(Reason::Fragment),
        ),
        case(
            "fragment offset",
            offset.bytes(),
            Out::Unchanged,
            Some(Reason::Fragment),
        ),
        case(
            "UDP checksum zero stays zero",
            nosum.bytes(),
            steered(nosum.clone(), B[1], 53),
            Some(Reason::Steered),
        ),
        case(
            "wildcard listen, backend on another port",
            wild.bytes(),
            steered(wild.clone(), [10, 100, 14, 9], 5353),
            Some(Reason::Steered),
        ),
        case(
            "wildcard listen, other port",
            query([198, 51, 100, 7], 5301).bytes(),
            Out::Unchanged,
            Some(Reason::NotService),
        ),
    ];
    prog.check(XDP_PROGRAM, &cases);
}

#[test]
fn xdp_no_backend() {
    let mut prog = Loaded::new();
    // Config validation never produces an empty service; the data path must still cope.
    let mut confs: Array<_, ServiceConf> =
        Array::try_from(prog.ebpf.map_mut(names::SERVICE_CONF).unwrap()).unwrap();
    confs
        .set(
            9,
            ServiceConf {
                in_use: 1,
                ..Default::default()
            },
            0,
        )
        .unwrap();
    let mut services: HashMap<_, Endpoint, u32> =
        HashMap::try_from(prog.ebpf.map_mut(names::SERVICES).unwrap()).unwrap();
    services
        .insert(
            Endpoint::new([192, 0, 2, 30], 53u16.to_be_bytes(), 17),
            9,
            0,
        )
        .unwrap();
    prog.check(
        XDP_PROGRAM,
        &[case(
            "service without backends",
            query([192, 0, 2, 30], 53).bytes(),
            Out::Unchanged,
            Some(Reason::NoBackend),
        )],
    );
}

#[test]
fn nth_and_random_selection() {
    pin_to_cpu0();
    let prog = Loaded::new();
    let dst_of = |out: &[u8]| Ipv4Addr::new(out[30], out[31], out[32], out[33]);
    let nth: Vec<Ipv4Addr> = (0..8)
        .map(|_| dst_of(&prog.run(XDP_PROGRAM, &query(VIP, 53).bytes()).1))
        .collect();
    let want: Vec<Ipv4Addr> = B
        .iter()
        .chain(B.iter())
        .map(|b| Ipv4Addr::from(*b))
        .collect();
    assert_eq!(nth, want, "nth walks the backends in order");

    let draws = 4000;
    let mut hits = std::collections::BTreeMap::new();
    for _ in 0..draws {
        *hits
            .entry(dst_of(
                &prog.run(XDP_PROGRAM, &query([192, 0, 2, 20], 53).bytes()).1,
            ))
            .or_insert(0u32) += 1;
    }
    assert_eq!(hits.len(), 4, "random reaches every backend: {hits:?}");
    let chi2 = testbed::chi_square_uniform(&hits.values().map(|&h| h as usize).collect::<Vec<_>>());
    assert!(
        chi2 < testbed::CHI_SQUARE_3DF_P001,
        "random split {hits:?} fails chi-square at p = 0.001: {chi2:.2}"
    );
}

#[test]
fn tc_reply_table() {
    pin_to_cpu0();
    let prog = Loaded::new();
    // Steer one query to the alias and one to the wildcard service to create flows.
    prog.run(XDP_PROGRAM, &query(ALIAS, 53).bytes());
    prog.run(XDP_PROGRAM, &query([198, 51, 100, 7], 5300).bytes());
    let client = [192, 0, 2, 100];
    let answer = |src: [u8; 4], sport: u16| query(client, 40000).from(src, sport);
    let mut nosum = answer(B[0], 53);
    nosum.zero_udp_csum = true;
    let mut other_client = answer(B[0], 53);
    other_client.dport = 40001;
    let tc = |what, input: Vec<u8>, out, reason| Case {
        what,
        input,
        action: TC_ACT_OK,
        out,
        reason,
    };
    let cases = [
        tc(
            "answer from the backend",
            answer(B[0], 53).bytes(),
            Out::Packet(answer(ALIAS, 53).bytes()),
            Some(Reason::ReplyRewritten),
        ),
        tc(
            "zero UDP checksum stays zero",
            nosum.bytes(),
            Out::Packet({
                let mut p = nosum.clone();
                p.src = ALIAS;
                p.bytes()
            }),
            Some(Reason::ReplyRewritten),
        ),
        tc(
            "port translated back too",
            answer([10, 100, 14, 9], 5353).bytes(),
            Out::Packet(answer([198, 51, 100, 7], 5300).bytes()),
            Some(Reason::ReplyRewritten),
        ),
        tc(
            "backend packet with no flow",
            other_client.bytes(),
            Out::Unchanged,
            Some(Reason::ReplyNoFlow),
        ),
        tc(
            "not from a backend",
            answer([192, 0, 2, 1], 53).bytes(),
            Out::Unchanged,
            None,
        ),
        tc(
            "from a backend address, other port",
            answer(B[0], 54).bytes(),
            Out::Unchanged,
            None,
        ),
    ];
    prog.check(TC_PROGRAM, &cases);
}

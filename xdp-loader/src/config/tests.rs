use std::io::Write as _;

use xdp_common::{MAX_BACKENDS_PER_SERVICE, SERVICE_NAME_LEN};

use super::*;

const FILE: &str = "dnsteer.toml";

const EXAMPLE: &str = r#"
interface = "eth3"
xdp_mode = "auto"            # auto | driver | skb   (optional, default auto)

[[service]]
name = "dns"
listen = ["192.0.2.10:53", "192.0.2.11:53"]   # or ["*:53"]
protocol = "udp"
select = "nth"
backends = ["10.100.13.2:53", "10.100.13.3:53", "10.100.13.4:53", "10.100.13.5:53"]
"#;

fn parse_str(text: &str) -> Result<Config, ConfigError> {
    parse(text, Path::new(FILE))
}

/// A valid config with one of every key, for the cases below to break one at a time.
const BASE: &str = r#"interface = "eth3"
xdp_mode = "auto"
[[service]]
name = "dns"
listen = ["192.0.2.10:53"]
protocol = "udp"
select = "nth"
backends = ["10.0.0.2:53"]
"#;

/// `BASE` with its `key` line set to `value`, or with `key = value` appended to the service.
fn set(key: &str, value: &str) -> String {
    let line = format!("{key} = {value}\n");
    match BASE.lines().find(|l| l.starts_with(&format!("{key} = "))) {
        Some(old) => BASE.replace(&format!("{old}\n"), &line),
        None => format!("{BASE}{line}"),
    }
}

/// `BASE` and a second service.
fn and_service(name: &str, listen: &str) -> String {
    format!("{BASE}[[service]]\nname = {name:?}\nlisten = {listen}\nbackends = [\"10.0.0.2:53\"]\n")
}

/// `BASE` with protocol `first`, and a service "b" on the same listen address with `second`.
fn protocols(first: &str, second: &str) -> String {
    let text = and_service("b", r#"["192.0.2.10:53"]"#);
    let text = text.replace("protocol = \"udp\"", &format!("protocol = {first:?}"));
    format!("{text}protocol = {second:?}\n")
}

/// `BASE` and a `[flows]` table holding `lines`; they start on line 10.
fn flows(lines: &str) -> String {
    format!("{BASE}[flows]\n{lines}\n")
}

/// `BASE` with a `[service.health]` table holding `lines`; they start on line 10.
fn health(lines: &str) -> String {
    format!("{BASE}[service.health]\n{lines}\n")
}

/// A TOML array of strings.
fn array(entries: impl Iterator<Item = String>) -> String {
    let quoted: Vec<String> = entries.map(|e| format!("{e:?}")).collect();
    format!("[{}]", quoted.join(", "))
}

fn backend(a: u8, b: u8, c: u8, d: u8, port: u16, weight: u32) -> BackendSpec {
    BackendSpec {
        addr: SocketAddr::from((Ipv4Addr::new(a, b, c, d), port)),
        weight,
    }
}

fn backend6(addr: &str, port: u16, weight: u32) -> BackendSpec {
    BackendSpec {
        addr: SocketAddr::new(addr.parse().unwrap(), port),
        weight,
    }
}

#[test]
fn ipv6_services_and_the_two_wildcards() {
    let text = r#"interface = "eth3"
[[service]]
name = "dns6"
listen = ["[2001:db8::10]:53", "[2001:DB8::11]:53"]
protocol = "udp+tcp"
backends = ["[2001:db8:13::2]:53", { addr = "[2001:db8:13::3]:5353", weight = 2 }]

[[service]]
name = "any4"
listen = ["*:5300"]
backends = ["10.0.0.2:53"]

[[service]]
name = "any6"
listen = ["[::]:5300"]
backends = ["[fd00::2]:53"]
"#;
    let config = parse_str(text).unwrap();
    let dns6 = &config.services[0];
    let shown: Vec<String> = dns6.listen.iter().map(ToString::to_string).collect();
    assert_eq!(shown, ["[2001:db8::10]:53", "[2001:db8::11]:53"]);
    assert!(dns6.listen.iter().all(|l| !l.is_wildcard()));
    assert_eq!(
        dns6.backends,
        [
            backend6("2001:db8:13::2", 53, 1),
            backend6("2001:db8:13::3", 5353, 2)
        ]
    );
    // `*` and `[::]` on one port are two entries: any IPv4, any IPv6 address.
    let (any4, any6) = (config.services[1].listen[0], config.services[2].listen[0]);
    assert_eq!(any4, Listen::any_ipv4(5300));
    assert_eq!(
        (any4.to_string(), any6.to_string()),
        ("*:5300".to_owned(), "[::]:5300".to_owned())
    );
    assert!(any4.is_wildcard() && any6.is_wildcard());
    assert_eq!(Family::of(any6.addr), Family::Ipv6);
    for l in [any4, any6, dns6.listen[0]] {
        assert_eq!(l.to_string().parse::<Listen>(), Ok(l));
    }
    // One address and port, IPv6 too, per protocol: udp+tcp takes both.
    let clash = format!(
        "{text}[[service]]\nname = \"b\"\nprotocol = \"tcp\"\nlisten = [\"[2001:db8::11]:53\"]\nbackends = [\"[2001:db8:13::9]:53\"]\n"
    );
    let message = parse_str(&clash).unwrap_err().to_string();
    assert!(
            message.contains(r#"service[3] "b": listen[0] = "[2001:db8::11]:53": service[0] "dns6" listens on [2001:db8::11]:53 (tcp) already"#),
            "{message}"
        );
}

#[test]
fn example_parses() {
    let backends = (2..=5).map(|h| backend(10, 100, 13, h, 53, 1)).collect();
    let expected = Config {
        interface: "eth3".to_owned(),
        xdp_mode: XdpModeSetting::Auto,
        forward: Forward::Stack,
        services: vec![Service {
            name: "dns".to_owned(),
            listen: vec![
                Listen {
                    addr: Ipv4Addr::new(192, 0, 2, 10).into(),
                    port: 53,
                },
                Listen {
                    addr: Ipv4Addr::new(192, 0, 2, 11).into(),
                    port: 53,
                },
            ],
            protocol: Protocol::Udp,
            select: Select::Nth,
            backends,
            health: None,
            kubernetes: None,
            passive: None,
        }],
        flows: FlowSettings::default(),
        persist: false,
        limits: Limits::default(),
        sockets: SocketCgroup::Off,
    };
    assert_eq!(parse_str(EXAMPLE).unwrap(), expected);
}

/// The shipped example keeps the iptables rules' four equal backends.
#[test]
fn shipped_example_parses() {
    let text = include_str!("../../../examples/dnsteer.toml");
    let config = parse(text, Path::new("examples/dnsteer.toml")).unwrap();
    let service = &config.services[..];
    let [service] = service else {
        panic!("one service expected: {service:?}");
    };
    let backends: Vec<BackendSpec> = (2..=5).map(|h| backend(10, 100, 13, h, 53, 1)).collect();
    assert_eq!(service.backends, backends);
    assert_eq!(service.listen.len(), 2);
    assert_eq!(config.flows, FlowSettings::default());

    // Its commented-out tables parse too, and say the defaults.
    let mut open = false;
    let uncommented: Vec<&str> = text
        .lines()
        .map(|line| {
            open = (open && !line.is_empty()) || line.starts_with("# [");
            if open { &line[2..] } else { line }
        })
        .collect();
    let config = parse(&uncommented.join("\n"), Path::new("examples/dnsteer.toml")).unwrap();
    assert_eq!(config.flows, FlowSettings::default());
    let health = config.services[0].health.clone().expect("[service.health]");
    assert_eq!(
        (health.interval, health.timeout, health.fall, health.rise),
        (
            HealthCheck::DEFAULT_INTERVAL,
            HealthCheck::DEFAULT_TIMEOUT,
            HealthCheck::DEFAULT_FALL,
            HealthCheck::DEFAULT_RISE
        )
    );
    assert_eq!(
        health.expect_rcode.map(|r| r.to_string()).as_deref(),
        Some("NOERROR")
    );
    // ... and the IPv6 service beside it.
    let dns6 = &config.services[1];
    assert_eq!(dns6.name, "dns6");
    assert_eq!(dns6.listen[0].to_string(), "[2001:db8::10]:53");
    assert_eq!(dns6.backends.len(), 4);
    assert!(dns6.backends.iter().all(|b| b.addr.is_ipv6()));
}

#[test]
fn defaults_and_wildcard() {
    let text = "interface = \"eth3\"\n[[service]]\nname = \"dns\"\nlisten = [\"*:53\"]\nbackends = [\"10.0.0.2:53\"]\n";
    let config = parse_str(text).unwrap();
    assert_eq!(config.xdp_mode, XdpModeSetting::Auto);
    let service = &config.services[0];
    assert_eq!(service.listen, [Listen::any_ipv4(53)]);
    assert_eq!(service.listen[0].to_string(), "*:53");
    assert_eq!(
        (service.protocol, service.select),
        (Protocol::Udp, Select::Nth)
    );
    assert_eq!(service.protocol.ip_protos(), [PROTO_UDP]);
    assert_eq!(service.backends, [backend(10, 0, 0, 2, 53, 1)]);
    assert_eq!(
        config.flows,
        FlowSettings {
            size: 65536,
            query_timeout: Duration::from_secs(5),
            udp_idle_timeout: Duration::from_secs(30),
            tcp_idle_timeout: Duration::from_secs(300),
            tcp_closing_timeout: Duration::from_secs(10),
        }
    );
    assert_eq!(config.flows.size, DEFAULT_FLOW_SIZE);
}

#[test]
fn weights() {
    let text = set(
        "backends",
        r#"["10.0.0.2:53", { addr = "10.0.0.3:53", weight = 3 }, { addr = "10.0.0.4:53", weight = 0 }, { addr = "10.0.0.5:5353" }, { weight = 100, addr = "10.0.0.6:53" }]"#,
    );
    let config = parse_str(&text).unwrap();
    assert_eq!(
        config.services[0].backends,
        [
            backend(10, 0, 0, 2, 53, 1),
            backend(10, 0, 0, 3, 53, 3),
            backend(10, 0, 0, 4, 53, 0),
            backend(10, 0, 0, 5, 5353, 1),
            backend(10, 0, 0, 6, 53, MAX_WEIGHT),
        ]
    );
    // The same address on another port is another backend.
    let text = set(
        "backends",
        r#"["10.0.0.2:53", { addr = "10.0.0.2:5353", weight = 2 }]"#,
    );
    assert_eq!(parse_str(&text).unwrap().services[0].backends.len(), 2);
    // A multi-line table array reads the same.
    let text = BASE.replace(
        "backends = [\"10.0.0.2:53\"]\n",
        "backends = [\n  { addr = \"10.0.0.2:53\", weight = 0 },\n  \"10.0.0.3:53\",\n]\n",
    );
    assert_eq!(
        parse_str(&text).unwrap().services[0].backends,
        [backend(10, 0, 0, 2, 53, 0), backend(10, 0, 0, 3, 53, 1)]
    );
}

#[test]
fn protocols_and_listen_conflicts() {
    let ip_protos = |word: &str| {
        let config = parse_str(&set("protocol", &format!("{word:?}"))).unwrap();
        let protocol = config.services[0].protocol;
        assert_eq!(protocol.as_str(), word);
        protocol.ip_protos()
    };
    assert_eq!(ip_protos("udp"), [PROTO_UDP]);
    assert_eq!(ip_protos("tcp"), [PROTO_TCP]);
    assert_eq!(ip_protos("udp+tcp"), [PROTO_UDP, PROTO_TCP]);
    // One address and port, two services: one per IP protocol.
    for (first, second) in [("udp", "tcp"), ("tcp", "udp")] {
        let config = parse_str(&protocols(first, second)).unwrap();
        assert_eq!(config.services.len(), 2, "{first} and {second}");
    }
    // An exact address and `*` are separate entries whichever the protocols.
    let text = and_service("b", r#"["*:53"]"#)
        .replace("protocol = \"udp\"", "protocol = \"udp+tcp\"")
        + "protocol = \"udp+tcp\"\n";
    assert_eq!(parse_str(&text).unwrap().services.len(), 2);
    // udp+tcp entries count twice towards MAX_LISTENERS: 512 listens fill it.
    let half = array((1..=MAX_LISTENERS / 2).map(|p| format!("192.0.2.11:{p}")));
    let text = set("listen", &half).replace("protocol = \"udp\"", "protocol = \"udp+tcp\"");
    assert_eq!(parse_str(&text).unwrap().services[0].listen.len(), 512);
}

#[test]
fn flows_table() {
    let config = parse_str(&flows("")).unwrap();
    assert_eq!(config.flows, FlowSettings::default());
    let text = flows(
        "size = 1024\nudp_idle_timeout = \"1.5s\"\ntcp_idle_timeout = 600\ntcp_closing_timeout = 0.5",
    );
    assert_eq!(
        parse_str(&text).unwrap().flows,
        FlowSettings {
            size: 1024,
            query_timeout: Duration::from_secs(5),
            udp_idle_timeout: Duration::from_millis(1500),
            tcp_idle_timeout: Duration::from_secs(600),
            tcp_closing_timeout: Duration::from_millis(500),
        }
    );
    // The bounds are allowed; one key alone keeps the others' defaults.
    let text = flows(
        "size = 16777216\nudp_idle_timeout = \"100ms\"\ntcp_idle_timeout = \"24h\"\ntcp_closing_timeout = 0.1",
    );
    let settings = parse_str(&text).unwrap().flows;
    assert_eq!(
        (settings.size, settings.udp_idle_timeout),
        (MAX_FLOW_SIZE, MIN_FLOW_TIMEOUT)
    );
    assert_eq!(
        (settings.tcp_idle_timeout, settings.tcp_closing_timeout),
        (MAX_FLOW_TIMEOUT, MIN_FLOW_TIMEOUT)
    );
    let settings = parse_str(&flows("tcp_idle_timeout = \"1h\""))
        .unwrap()
        .flows;
    assert_eq!(
        settings,
        FlowSettings {
            tcp_idle_timeout: Duration::from_secs(3600),
            ..FlowSettings::default()
        }
    );
    let settings = parse_str(&flows("query_timeout = \"750ms\""))
        .unwrap()
        .flows;
    assert_eq!(settings.query_timeout, Duration::from_millis(750));
    let err = parse_str(&flows("query_timeout = \"11m\"")).unwrap_err();
    assert!(
        err.to_string().contains("flows.query_timeout") && err.to_string().contains("10m"),
        "{err}"
    );
    // `[flows]` may come before the services.
    let text = BASE.replacen("[[service]]", "[flows]\nsize = 2048\n[[service]]", 1);
    assert_eq!(parse_str(&text).unwrap().flows.size, 2048);
}

#[test]
fn limits_table() {
    assert_eq!(parse_str(BASE).unwrap().limits, Limits::default());
    let text = format!("{BASE}[limits]\nservices = 10000\nlisteners = 20000\n");
    assert_eq!(
        parse_str(&text).unwrap().limits,
        Limits {
            services: 10000,
            listeners: 20000
        }
    );
    // Raised, more services than the default fit.
    let many: String = (0..=MAX_SERVICES)
            .map(|i| format!("[[service]]\nname = \"s{i}\"\nlisten = [\"192.0.2.1:{}\"]\nbackends = [\"10.0.0.2:53\"]\n", i + 1))
            .collect();
    let text = format!(
        "interface = \"eth3\"\n{many}[limits]\nservices = {}\n",
        MAX_SERVICES + 1
    );
    assert_eq!(
        parse_str(&text).unwrap().services.len(),
        MAX_SERVICES as usize + 1
    );
    let err = parse_str(&format!("interface = \"eth3\"\n{many}"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("at most 256 services fit in the maps"),
        "{err}"
    );
}

#[test]
fn health_table() {
    assert_eq!(parse_str(BASE).unwrap().services[0].health, None);
    let check = parse_str(&health(r#"query = "health.example. A""#))
        .unwrap()
        .services[0]
        .health
        .clone()
        .unwrap();
    assert_eq!(check.query.to_string(), "health.example. A");
    assert_eq!(
        (check.interval, check.timeout, check.fall, check.rise),
        (
            HealthCheck::DEFAULT_INTERVAL,
            HealthCheck::DEFAULT_TIMEOUT,
            3,
            2
        )
    );
    assert_eq!(check.expect_rcode, None);
    let text = health(
        "query = \"probe.example TXT\"\ninterval = \"250ms\"\ntimeout = 0.1\nfall = 1\nrise = 5\nexpect_rcode = \"nxdomain\"",
    );
    let check = parse_str(&text).unwrap().services[0]
        .health
        .clone()
        .unwrap();
    assert_eq!(check.query.to_string(), "probe.example. TXT");
    assert_eq!(
        (check.interval, check.timeout, check.fall, check.rise),
        (Duration::from_millis(250), Duration::from_millis(100), 1, 5)
    );
    assert_eq!(
        check.expect_rcode.map(|r| r.to_string()).as_deref(),
        Some("NXDOMAIN")
    );
    // A short interval shortens the default timeout with it.
    let text = health("query = \"h.example.\"\ninterval = \"200ms\"");
    let check = parse_str(&text).unwrap().services[0]
        .health
        .clone()
        .unwrap();
    assert_eq!(check.timeout, Duration::from_millis(200));
}

#[test]
fn human_durations() {
    let ms = Duration::from_millis;
    for (d, text) in [
        (ms(0), "0s"),
        (ms(500), "500ms"),
        (ms(1500), "1500ms"),
        (ms(30_000), "30s"),
        (ms(300_000), "5m"),
        (ms(86_400_000), "24h"),
        (Duration::from_micros(2500), "0.0025s"),
    ] {
        assert_eq!(human(d), text);
        assert_eq!(parse_duration(text), Ok(d), "{text}");
    }
}

#[test]
fn durations() {
    let ms = Duration::from_millis;
    for (text, expected) in [
        ("500ms", ms(500)),
        ("30s", ms(30_000)),
        ("5m", ms(300_000)),
        ("1h", ms(3_600_000)),
        ("1.5s", ms(1500)),
        ("0.1s", ms(100)),
        ("1.25m", ms(75_000)),
        ("0.5h", ms(1_800_000)),
        ("2.5ms", Duration::from_micros(2500)),
        ("30", ms(30_000)),
        ("0.25", ms(250)),
        (".5s", ms(500)),
        ("0", Duration::ZERO),
        ("0.000000001s", Duration::from_nanos(1)),
        // Below a nanosecond truncates.
        ("0.0000000019s", Duration::from_nanos(1)),
        ("0.1000000000000000000001h", ms(360_000)),
    ] {
        assert_eq!(parse_duration(text), Ok(expected), "{text:?}");
    }
    for (text, reason) in [
        ("", "expected a number and a unit"),
        ("s", "expected a number and a unit"),
        (".s", "expected a number and a unit"),
        ("1.2.3s", "expected a number and a unit"),
        ("5d", "expected a number and a unit"),
        ("5 s", "expected a number and a unit"),
        (" 5s", "expected a number and a unit"),
        ("5S", "expected a number and a unit"),
        ("-1s", "expected a number and a unit"),
        ("1e3s", "expected a number and a unit"),
        ("5sec", "expected a number and a unit"),
        ("99999999999999999999s", "too long"),
        ("18446744073709551615h", "too long"),
    ] {
        let message = parse_duration(text).unwrap_err();
        assert!(message.contains(reason), "{text:?}: {message:?}");
    }
    assert_eq!(
        parse_duration("5d").unwrap_err(),
        r#"expected a number and a unit (ms, s, m or h), e.g. "500ms", "1.5s", "5m" or "1h""#
    );
}

#[test]
fn backend_spec_from_str_and_display() {
    for (text, expected, shown) in [
        ("10.0.0.2:53", backend(10, 0, 0, 2, 53, 1), "10.0.0.2:53"),
        (
            "10.0.0.2:53=3",
            backend(10, 0, 0, 2, 53, 3),
            "10.0.0.2:53=3",
        ),
        ("10.0.0.2:53=1", backend(10, 0, 0, 2, 53, 1), "10.0.0.2:53"),
        (
            "10.0.0.2:53=0",
            backend(10, 0, 0, 2, 53, 0),
            "10.0.0.2:53=0",
        ),
        (
            "10.0.0.2:5353=100",
            backend(10, 0, 0, 2, 5353, 100),
            "10.0.0.2:5353=100",
        ),
        (
            "[2001:db8::2]:53=3",
            backend6("2001:db8::2", 53, 3),
            "[2001:db8::2]:53=3",
        ),
        (
            "[2001:DB8:0::2]:5353",
            backend6("2001:db8::2", 5353, 1),
            "[2001:db8::2]:5353",
        ),
    ] {
        let spec: BackendSpec = text.parse().unwrap();
        assert_eq!(spec, expected, "{text:?}");
        assert_eq!(spec.to_string(), shown);
        assert_eq!(shown.parse::<BackendSpec>(), Ok(spec));
    }
    for (text, reason) in [
        (
            "10.0.0.2:53=101",
            r#"weight "101": above the maximum of 100; use an integer from 0 (drain) to 100"#,
        ),
        (
            "10.0.0.2:53=99999999999999999999",
            r#"weight "99999999999999999999": above the maximum of 100"#,
        ),
        ("10.0.0.2:53=-1", r#"weight "-1": below the minimum of 0"#),
        ("10.0.0.2:53=1.5", r#"weight "1.5": not an integer"#),
        ("10.0.0.2:53=", r#"weight "": not an integer"#),
        ("10.0.0.2:53=x", r#"weight "x": not an integer"#),
        ("10.0.0.2:53=3=4", r#"weight "3=4": not an integer"#),
        (
            "10.0.0.2=3",
            "expected IPV4:PORT or [IPV6]:PORT, optionally followed by =WEIGHT",
        ),
        (
            "10.0.0:53=3",
            r#""10.0.0" is not an IPv4 address; use IPV4:PORT or [IPV6]:PORT, optionally followed by =WEIGHT"#,
        ),
        ("[2001:db8::2]:53=101", "above the maximum of 100"),
        ("[fe80::2]:53", "link-local"),
        ("[ff02::1]:53=2", "multicast"),
        ("*:53=2", "`*` is not allowed for a backend"),
        ("10.0.0.2:0", "port 0 is not allowed"),
        ("224.0.0.1:53", "multicast"),
    ] {
        let message = text.parse::<BackendSpec>().unwrap_err();
        assert!(message.contains(reason), "{text:?}: {message:?}");
    }
    assert_eq!(
        parse_backend_addr("10.0.0.2:53"),
        Ok(SocketAddr::from((Ipv4Addr::new(10, 0, 0, 2), 53)))
    );
    assert_eq!(
        parse_backend_addr("10.0.0.2:53=3").unwrap_err(),
        r#""53=3" is not a port; use a port from 1 to 65535"#
    );
    assert_eq!(
        parse_backend_addr("*:53").unwrap_err(),
        r#"`*` is not allowed for a backend; use IPV4:PORT or [IPV6]:PORT, e.g. "10.0.0.2:53" or "[2001:db8::2]:53""#
    );
}

#[test]
fn keywords_round_trip() {
    for mode in [
        XdpModeSetting::Auto,
        XdpModeSetting::Driver,
        XdpModeSetting::Skb,
    ] {
        assert_eq!(mode.as_str().parse::<XdpModeSetting>(), Ok(mode));
    }
    for select in [Select::Nth, Select::Random] {
        assert_eq!(select.as_str().parse::<Select>(), Ok(select));
    }
    for protocol in [Protocol::Udp, Protocol::Tcp, Protocol::UdpTcp] {
        assert_eq!(protocol.as_str().parse::<Protocol>(), Ok(protocol));
    }
    assert_eq!("udp".parse::<Protocol>(), Ok(Protocol::Udp));
    // The CLI's --xdp-mode shares the config's wording.
    assert_eq!(
        "fast".parse::<XdpModeSetting>().unwrap_err(),
        r#"expected "auto", "driver" or "skb""#
    );
    let listen = Listen {
        addr: Ipv4Addr::new(192, 0, 2, 10).into(),
        port: 53,
    };
    assert_eq!(listen.to_string().parse::<Listen>(), Ok(listen));
}

/// Each case: a config, how the message starts (file, field and value), and the
/// reason it must give.
#[test]
fn invalid_configs_name_file_field_and_value() {
    let services = (0..=MAX_SERVICES).map(|i| format!("[[service]]\nname = \"s{i}\"\n"));
    let services = format!("interface = \"eth3\"\n{}", services.collect::<String>());
    let listeners = array((1..=MAX_LISTENERS).map(|p| format!("192.0.2.11:{p}")));
    let both = set(
        "listen",
        &array((1..=MAX_LISTENERS / 2 + 1).map(|p| format!("192.0.2.11:{p}"))),
    )
    .replace("protocol = \"udp\"", "protocol = \"udp+tcp\"");
    let backends = array((1..=MAX_BACKENDS_PER_SERVICE + 1).map(|h| format!("10.0.0.{h}:53")));
    let long_name = "n".repeat(SERVICE_NAME_LEN);
    let long_name_head = format!("service[0].name = {long_name:?}");
    #[rustfmt::skip]
        let cases: Vec<(String, &str, &str)> = vec![
            ("interface = \n".into(), "TOML parse error at line 1", "string values must be quoted"),
            (BASE.replace("interface", "interfce"), "TOML parse error at line 1", "unknown field `interfce`"),
            (set("weight", "3"), "TOML parse error at line 9", "unknown field `weight`"),
            (BASE.replace("interface = \"eth3\"", ""), "interface is missing", "ip link"),
            (set("interface", r#""""#), r#"interface = """#, r#"e.g. interface = "eth0""#),
            (
                set("interface", r#""eth3:1""#),
                r#"interface = "eth3:1""#,
                r#""eth3:1" is an address label on eth3, not an interface; use interface = "eth3" and put the alias's address in `listen`"#,
            ),
            (set("interface", r#""a-very-long-name""#), r#"interface = "a-very-long-name""#, "at most 15 bytes"),
            (set("interface", r#""eth 3""#), r#"interface = "eth 3""#, "cannot contain"),
            (set("xdp_mode", r#""native""#), r#"xdp_mode = "native""#, r#"expected "auto", "driver" or "skb""#),
            (set("select", r#""rr""#), r#"service[0] "dns": select = "rr""#, r#"expected "nth", "random" or "least_outstanding""#),
            (set("protocol", r#""sctp""#), r#"service[0] "dns": protocol = "sctp""#, r#"expected "udp", "tcp" or "udp+tcp""#),
            (set("protocol", r#""tcp+udp""#), r#"service[0] "dns": protocol = "tcp+udp""#, r#"expected "udp", "tcp" or "udp+tcp""#),
            ("interface = \"eth3\"\n".into(), "[[service]] is missing", "add at least one [[service]]"),
            (services, "[[service]] = [257 entries]", "at most 256 services"),
            (BASE.replace("name = \"dns\"", ""), "service[0].name is missing", "add name = "),
            (set("name", r#""""#), r#"service[0].name = """#, "needs a name"),
            (set("name", &format!("{long_name:?}")), &long_name_head, "32 bytes long; at most 31"),
            (and_service("dns", r#"["*:54"]"#), r#"service[1].name = "dns""#, "service[0] has this name"),
            (BASE.replace("listen = [\"192.0.2.10:53\"]", ""), r#"service[0] "dns": listen is missing"#, "add listen = "),
            (set("listen", "[]"), r#"service[0] "dns": listen = []"#, "at least one entry"),
            (set("listen", r#"["192.0.2.10"]"#), r#"service[0] "dns": listen[0] = "192.0.2.10""#, "expected IPV4:PORT, [IPV6]:PORT, *:PORT (any IPv4 address) or [::]:PORT"),
            (set("listen", r#"["192.0.2.300:53"]"#), r#"service[0] "dns": listen[0] = "192.0.2.300:53""#, "not an IPv4 address"),
            (set("listen", r#"["ns1.example:53"]"#), r#"service[0] "dns": listen[0] = "ns1.example:53""#, "not an IPv4 address"),
            (set("listen", r#"["2001:db8::1"]"#), r#"service[0] "dns": listen[0] = "2001:db8::1""#, r#"an IPv6 address goes in brackets, followed by the port, as in "[2001:db8::10]:53""#),
            (set("listen", r#"["2001:db8::1:53"]"#), r#"service[0] "dns": listen[0] = "2001:db8::1:53""#, "goes in brackets"),
            (set("listen", r#"["[2001:db8::1]"]"#), r#"service[0] "dns": listen[0] = "[2001:db8::1]""#, "expected :PORT after [2001:db8::1]"),
            (set("listen", r#"["[2001:db8::1:53"]"#), r#"service[0] "dns": listen[0] = "[2001:db8::1:53""#, "opened with [ must close with ]"),
            (set("listen", r#"["[2001:db8::g]:53"]"#), r#"service[0] "dns": listen[0] = "[2001:db8::g]:53""#, r#""2001:db8::g" is not an IPv6 address"#),
            (set("listen", r#"["[192.0.2.10]:53"]"#), r#"service[0] "dns": listen[0] = "[192.0.2.10]:53""#, "192.0.2.10 is an IPv4 address: write it without brackets, as 192.0.2.10:53"),
            (set("listen", r#"["[fe80::1%eth0]:53"]"#), r#"service[0] "dns": listen[0] = "[fe80::1%eth0]:53""#, "has a zone index"),
            (set("listen", r#"["[fe80::1]:53"]"#), r#"service[0] "dns": listen[0] = "[fe80::1]:53""#, "fe80::1 is link-local"),
            (set("listen", r#"["[::ffff:192.0.2.10]:53"]"#), r#"service[0] "dns": listen[0] = "[::ffff:192.0.2.10]:53""#, "::ffff:192.0.2.10 is an IPv4-mapped address: write the IPv4 address 192.0.2.10 instead"),
            (set("listen", r#"["[ff02::fb]:53"]"#), r#"service[0] "dns": listen[0] = "[ff02::fb]:53""#, "ff02::fb is a multicast address; dnsteer never steers packets to multicast"),
            (set("listen", r#"["224.0.0.251:53"]"#), r#"service[0] "dns": listen[0] = "224.0.0.251:53""#, "224.0.0.251 is a multicast address"),
            (set("listen", r#"["255.255.255.255:53"]"#), r#"service[0] "dns": listen[0] = "255.255.255.255:53""#, "the broadcast address"),
            (set("listen", r#"["[::]:53", "[::]:53"]"#), r#"service[0] "dns": listen[1] = "[::]:53""#, "the same as listen[0]"),
            // The family rule: every listen entry and backend of a service is of listen[0]'s family.
            (set("listen", r#"["[2001:db8::1]:53"]"#), r#"service[0] "dns": backends[0] = "10.0.0.2:53""#, r#"an IPv4 backend in a service whose listen[0] "[2001:db8::1]:53" is IPv6; a service is one family, since XDP rewrites the destination in place and cannot translate between IPv4 and IPv6"#),
            (set("listen", r#"["192.0.2.10:53", "[2001:db8::1]:53"]"#), r#"service[0] "dns": listen[1] = "[2001:db8::1]:53""#, r#"an IPv6 listen address in a service whose listen[0] "192.0.2.10:53" is IPv4"#),
            (set("listen", r#"["[::]:53", "*:53"]"#), r#"service[0] "dns": listen[1] = "*:53""#, r#"an IPv4 listen address in a service whose listen[0] "[::]:53" is IPv6"#),
            (set("backends", r#"["10.0.0.2:53", "[2001:db8::2]:53"]"#), r#"service[0] "dns": backends[1] = "[2001:db8::2]:53""#, "an IPv6 backend in a service whose listen[0] \"192.0.2.10:53\" is IPv4; a service is one family"),
            (set("backends", r#"["10.0.0.2:53", { addr = "[2001:db8::2]:53", weight = 2 }]"#), r#"service[0] "dns": backends[1].addr = "[2001:db8::2]:53""#, "an IPv6 backend"),
            (set("listen", r#"["*:53"]"#).replace("10.0.0.2:53", "[2001:db8::2]:53"), r#"service[0] "dns": backends[0] = "[2001:db8::2]:53""#, r#"whose listen[0] "*:53" is IPv4 ("*:53" is any IPv4 address; "[::]:53" is any IPv6 one)"#),
            (set("listen", r#"["*:0"]"#), r#"service[0] "dns": listen[0] = "*:0""#, "port 0 is not allowed; use a port from 1 to 65535"),
            (set("listen", r#"["*:65536"]"#), r#"service[0] "dns": listen[0] = "*:65536""#, r#""65536" is not a port"#),
            (set("listen", r#"["0.0.0.0:53"]"#), r#"service[0] "dns": listen[0] = "0.0.0.0:53""#, r#"write "*:53""#),
            (set("listen", r#"["*:53", "192.0.2.10:53", "*:53"]"#), r#"service[0] "dns": listen[2] = "*:53""#, "the same as listen[0]"),
            (
                and_service("b", r#"["*:54", "192.0.2.10:53"]"#),
                r#"service[1] "b": listen[1] = "192.0.2.10:53""#,
                r#"service[0] "dns" listens on 192.0.2.10:53 (udp) already"#,
            ),
            // Listen conflicts are per IP protocol.
            (protocols("udp+tcp", "tcp"), r#"service[1] "b": listen[0] = "192.0.2.10:53""#, r#"service[0] "dns" listens on 192.0.2.10:53 (tcp) already"#),
            (protocols("tcp", "udp+tcp"), r#"service[1] "b": listen[0] = "192.0.2.10:53""#, r#"service[0] "dns" listens on 192.0.2.10:53 (tcp) already"#),
            (protocols("udp", "udp+tcp"), r#"service[1] "b": listen[0] = "192.0.2.10:53""#, r#"service[0] "dns" listens on 192.0.2.10:53 (udp) already"#),
            (protocols("tcp", "tcp"), r#"service[1] "b": listen[0] = "192.0.2.10:53""#, "(tcp) already; an address, port and protocol belong to one service"),
            (and_service("b", &listeners), r#"service[1] "b": listen[1023] = "192.0.2.11:1024""#, "at most 1024 listen entries"),
            (both, r#"service[0] "dns": listen[512] = "192.0.2.11:513""#, "at most 1024 listen entries over all services fit in the maps (a udp+tcp service's entries count twice); raise [limits] listeners"),
            (BASE.replace("backends = [\"10.0.0.2:53\"]", ""), r#"service[0] "dns": backends is missing"#, "add backends = "),
            (set("backends", "[]"), r#"service[0] "dns": backends = []"#, "at least one entry"),
            (set("backends", r#""10.0.0.2:53""#), "TOML parse error at line 8", "invalid type: string"),
            (set("backends", r#"["10.0.0:53"]"#), r#"service[0] "dns": backends[0] = "10.0.0:53""#, "not an IPv4 address; use IPV4:PORT"),
            (set("backends", r#"["*:53"]"#), r#"service[0] "dns": backends[0] = "*:53""#, "`*` is not allowed for a backend"),
            (set("backends", r#"["10.0.0.2:53", "10.0.0.3:53", "10.0.0.1:0"]"#), r#"service[0] "dns": backends[2] = "10.0.0.1:0""#, "port 0 is not allowed"),
            (set("backends", r#"["0.0.0.0:53"]"#), r#"service[0] "dns": backends[0] = "0.0.0.0:53""#, "unspecified"),
            (set("backends", r#"["224.0.0.1:53"]"#), r#"service[0] "dns": backends[0] = "224.0.0.1:53""#, "multicast"),
            (set("backends", r#"["255.255.255.255:53"]"#), r#"service[0] "dns": backends[0] = "255.255.255.255:53""#, "broadcast"),
            (set("backends", r#"["[::1]:53"]"#), r#"service[0] "dns": backends[0] = "[::1]:53""#, "an IPv6 backend in a service whose listen[0]"),
            (set("backends", r#"["[::]:53"]"#), r#"service[0] "dns": backends[0] = "[::]:53""#, ":: is the unspecified address; a backend needs a unicast host address"),
            (set("backends", r#"["[ff05::1:3]:53"]"#), r#"service[0] "dns": backends[0] = "[ff05::1:3]:53""#, "ff05::1:3 is a multicast address"),
            (set("backends", r#"["[fe80::2]:53"]"#), r#"service[0] "dns": backends[0] = "[fe80::2]:53""#, "fe80::2 is link-local (fe80::/10), which needs a scope id dnsteer does not handle"),
            (set("backends", r#"["[::ffff:10.0.0.2]:53"]"#), r#"service[0] "dns": backends[0] = "[::ffff:10.0.0.2]:53""#, "write the IPv4 address 10.0.0.2 instead"),
            (set("backends", r#"["2001:db8::2:53"]"#), r#"service[0] "dns": backends[0] = "2001:db8::2:53""#, "goes in brackets"),
            (set("backends", r#"["10.0.0.2:53", "10.0.0.2:53"]"#), r#"service[0] "dns": backends[1] = "10.0.0.2:53""#, "the same address as backends[0]; list each backend once"),
            (set("backends", &backends), r#"service[0] "dns": backends = [65 entries]"#, "at most 64 per service"),
            // Weighted backends.
            (set("backends", r#"[{ addr = "10.0.0.2:53", weight = 0 }, { addr = "10.0.0.3:53", weight = 0 }]"#), r#"service[0] "dns": backends = [2 entries]"#, "every backend has weight 0 (draining)"),
            (set("backends", r#"["10.0.0.2:53", { addr = "10.0.0.2:53", weight = 3 }]"#), r#"service[0] "dns": backends[1].addr = "10.0.0.2:53""#, "the same address as backends[0]"),
            (set("backends", r#"[{ addr = "10.0.0.2:53", weight = 0 }, "10.0.0.2:53"]"#), r#"service[0] "dns": backends[1] = "10.0.0.2:53""#, "the same address as backends[0]"),
            (set("backends", r#"["10.0.0.3:53", { addr = "10.0.0.2:53", weight = 101 }]"#), r#"service[0] "dns": backends[1].weight = 101"#, "above the maximum of 100; use an integer from 0 (drain) to 100"),
            (set("backends", r#"[{ addr = "10.0.0.2:53", weight = 4294967297 }]"#), r#"service[0] "dns": backends[0].weight = 4294967297"#, "above the maximum of 100"),
            (set("backends", r#"[{ addr = "10.0.0.2:53", weight = -1 }]"#), r#"service[0] "dns": backends[0].weight = -1"#, "below the minimum of 0; use an integer from 0 (drain) to 100"),
            (set("backends", r#"[{ addr = "10.0.0.2:53", weight = 1.5 }]"#), r#"service[0] "dns": backends[0].weight = 1.5"#, "not an integer; use an integer from 0 (drain) to 100"),
            (set("backends", r#"[{ addr = "10.0.0.2:53", weight = 2.0 }]"#), r#"service[0] "dns": backends[0].weight = 2.0"#, "not an integer"),
            (set("backends", r#"[{ addr = "10.0.0.2:53", weight = "3" }]"#), r#"service[0] "dns": backends[0].weight = "3""#, "a string; write 3 without quotes"),
            (set("backends", r#"[{ addr = "10.0.0.2:53", weight = "heavy" }]"#), r#"service[0] "dns": backends[0].weight = "heavy""#, "not an integer"),
            (set("backends", r#"[{ addr = "10.0.0.2:53", weight = true }]"#), r#"service[0] "dns": backends[0].weight = true"#, "not an integer"),
            (
                set("backends", r#"[{ addr = "10.0.0.2:53", wieght = 3 }]"#),
                r#"service[0] "dns": backends[0] = { addr = "10.0.0.2:53", wieght = 3 }"#,
                "unknown field `wieght`, expected `addr` or `weight`",
            ),
            (set("backends", r#"[{ weight = 3 }]"#), r#"service[0] "dns": backends[0].addr is missing"#, r#"add addr = "ADDR:PORT""#),
            (set("backends", r#"[{}]"#), r#"service[0] "dns": backends[0].addr is missing"#, r#"add addr = "ADDR:PORT""#),
            (set("backends", r#"[{ addr = 53 }]"#), r#"service[0] "dns": backends[0].addr = 53"#, r#"expected a quoted IPV4:PORT or [IPV6]:PORT, e.g. "10.0.0.2:53""#),
            (set("backends", r#"[{ addr = "10.0.0.2" }]"#), r#"service[0] "dns": backends[0].addr = "10.0.0.2""#, "expected IPV4:PORT"),
            (set("backends", r#"[{ addr = "*:53", weight = 2 }]"#), r#"service[0] "dns": backends[0].addr = "*:53""#, "`*` is not allowed"),
            (set("backends", r#"["10.0.0.2:53=3"]"#), r#"service[0] "dns": backends[0] = "10.0.0.2:53=3""#, r#"write a weighted backend as { addr = "10.0.0.2:53", weight = 3 }"#),
            (set("backends", r#"["10.0.0.2:53=x"]"#), r#"service[0] "dns": backends[0] = "10.0.0.2:53=x""#, "write a weighted backend as a table, e.g. { addr ="),
            (set("backends", "[53]"), r#"service[0] "dns": backends[0] = 53"#, r#"expected "ADDR:PORT" or { addr = "ADDR:PORT", weight = N }"#),
            (set("backends", r#"[["10.0.0.2:53"]]"#), r#"service[0] "dns": backends[0] = ["10.0.0.2:53"]"#, r#"expected "ADDR:PORT" or"#),
            // [limits]
            (format!("{BASE}[limits]\nservices = 0\n"), "limits.services = 0", "below the minimum of 1; use an integer from 1 to 16384"),
            (format!("{BASE}[limits]\nservices = 16385\n"), "limits.services = 16385", "above the maximum of 16384"),
            (format!("{BASE}[limits]\nlisteners = \"8\"\n"), r#"limits.listeners = "8""#, "a string; write 8 without quotes"),
            (format!("{BASE}[limits]\nbackends = 8\n"), "TOML parse error", "unknown field `backends`, expected `services` or `listeners`"),
            (format!("{}[limits]\nservices = 1\n", and_service("b", r#"["192.0.2.12:53"]"#)), "[[service]] = [2 entries]", "at most 1 services fit in the maps; raise [limits] services"),
            (format!("{BASE}[limits]\nlisteners = 1\n").replace(r#"listen = ["192.0.2.10:53"]"#, r#"listen = ["192.0.2.10:53", "192.0.2.11:53"]"#), r#"service[0] "dns": listen[1] = "192.0.2.11:53""#, "at most 1 listen entries over all services fit in the maps"),
            // [service.health]
            (health("interval = \"1s\""), r#"service[0] "dns": health.query is missing"#, r#"e.g. query = "health.example. A""#),
            (health("query = \"health.example. BOGUS\""), r#"service[0] "dns": health.query = "health.example. BOGUS""#, "NAME [TYPE]"),
            (health("query = \"\""), r#"service[0] "dns": health.query = """#, "NAME [TYPE]"),
            (health("query = \"h.example.\"\nintervall = 1"), "TOML parse error at line 11", "unknown field `intervall`"),
            (health("query = \"h.example.\"\ninterval = \"50ms\""), r#"service[0] "dns": health.interval = "50ms""#, r#"below the minimum of 100ms; use a duration from 100ms to 1h, e.g. "1s" or 1"#),
            (health("query = \"h.example.\"\ninterval = \"2h\""), r#"service[0] "dns": health.interval = "2h""#, "above the maximum of 1h"),
            (health("query = \"h.example.\"\ntimeout = \"1ms\""), r#"service[0] "dns": health.timeout = "1ms""#, "below the minimum of 10ms"),
            (health("query = \"h.example.\"\ninterval = \"1s\"\ntimeout = \"2s\""), r#"service[0] "dns": health.timeout = "2s""#, "longer than the interval (1s)"),
            (health("query = \"h.example.\"\nfall = 0"), r#"service[0] "dns": health.fall = 0"#, "below the minimum of 1; use 1 to 100 probes in a row"),
            (health("query = \"h.example.\"\nrise = 101"), r#"service[0] "dns": health.rise = 101"#, "above the maximum of 100"),
            (health("query = \"h.example.\"\nrise = \"2\""), r#"service[0] "dns": health.rise = "2""#, "a string; write 2 without quotes"),
            (health("query = \"h.example.\"\nexpect_rcode = \"FINE\""), r#"service[0] "dns": health.expect_rcode = "FINE""#, "NOERROR"),
            // [flows]
            (flows("sise = 2048"), "TOML parse error at line 10", "unknown field `sise`"),
            (flows("size = 1023"), "flows.size = 1023", "below the minimum of 1024; use an integer from 1024 to 16777216"),
            (flows("size = 0"), "flows.size = 0", "below the minimum of 1024"),
            (flows("size = -1"), "flows.size = -1", "below the minimum of 1024"),
            (flows("size = 16777217"), "flows.size = 16777217", "above the maximum of 16777216; use an integer from 1024 to 16777216"),
            (flows("size = 65536.0"), "flows.size = 65536.0", "not an integer"),
            (flows(r#"size = "64k""#), r#"flows.size = "64k""#, "not an integer"),
            (flows(r#"size = "65536""#), r#"flows.size = "65536""#, "a string; write 65536 without quotes"),
            (flows(r#"udp_idle_timeout = "50ms""#), r#"flows.udp_idle_timeout = "50ms""#, r#"below the minimum of 100ms; use a duration from 100ms to 24h, e.g. "30s" or 30"#),
            (flows("udp_idle_timeout = 0"), "flows.udp_idle_timeout = 0", "below the minimum of 100ms"),
            (flows("udp_idle_timeout = 0.05"), "flows.udp_idle_timeout = 0.05", "below the minimum of 100ms"),
            (flows(r#"udp_idle_timeout = "10d""#), r#"flows.udp_idle_timeout = "10d""#, r#"expected a number and a unit (ms, s, m or h), e.g. "500ms""#),
            (flows(r#"tcp_idle_timeout = "25h""#), r#"flows.tcp_idle_timeout = "25h""#, "above the maximum of 24h"),
            (flows("tcp_idle_timeout = 86401"), "flows.tcp_idle_timeout = 86401", "above the maximum of 24h"),
            (flows("tcp_idle_timeout = 1e300"), "flows.tcp_idle_timeout = 1e300", "above the maximum of 24h"),
            (flows(r#"tcp_idle_timeout = "99999999999999999999h""#), r#"flows.tcp_idle_timeout = "99999999999999999999h""#, "above the maximum of 24h"),
            (flows(r#"tcp_idle_timeout = "18446744073709551615h""#), r#"flows.tcp_idle_timeout = "18446744073709551615h""#, "above the maximum of 24h"),
            (flows(r#"tcp_closing_timeout = "10 s""#), r#"flows.tcp_closing_timeout = "10 s""#, "expected a number and a unit"),
            (flows(r#"tcp_closing_timeout = """#), r#"flows.tcp_closing_timeout = """#, "expected a number and a unit"),
            (flows("tcp_closing_timeout = -5"), "flows.tcp_closing_timeout = -5", "negative; use a duration from 100ms to 24h"),
            (flows("tcp_closing_timeout = -0.5"), "flows.tcp_closing_timeout = -0.5", "negative"),
            (flows("tcp_closing_timeout = nan"), "flows.tcp_closing_timeout = nan", "expected a number and a unit"),
            (flows("tcp_closing_timeout = inf"), "flows.tcp_closing_timeout = inf", "expected a number and a unit"),
            (flows("tcp_closing_timeout = true"), "flows.tcp_closing_timeout = true", r#"expected a number and a unit (ms, s, m or h), e.g. "500ms", "1.5s", "5m" or "1h", or a number of seconds, e.g. 30"#),
        ];
    for (text, head, reason) in cases {
        let message = match parse_str(&text) {
            Ok(config) => panic!("{head}: accepted {config:?}"),
            Err(e) => e.to_string(),
        };
        assert!(
            message.starts_with(&format!("{FILE}: {head}")),
            "{message:?} does not start with {head:?}"
        );
        assert!(message.contains(reason), "{message:?} lacks {reason:?}");
    }
    // The brief's examples, word for word.
    let message = parse_str(&set(
        "backends",
        r#"["10.0.0.2:53", "10.0.0.3:53", "10.0.0.1:0"]"#,
    ))
    .unwrap_err();
    assert_eq!(
        message.to_string(),
        r#"dnsteer.toml: service[0] "dns": backends[2] = "10.0.0.1:0": port 0 is not allowed; use a port from 1 to 65535"#
    );
    let message = parse_str(&set(
        "backends",
        r#"["10.0.0.2:53", { addr = "10.0.0.3:53", weight = 101 }]"#,
    ))
    .unwrap_err();
    assert_eq!(
        message.to_string(),
        r#"dnsteer.toml: service[0] "dns": backends[1].weight = 101: above the maximum of 100; use an integer from 0 (drain) to 100"#
    );
}

#[test]
fn load_reads_the_file() {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(EXAMPLE.as_bytes()).unwrap();
    assert_eq!(load(file.path()).unwrap(), parse_str(EXAMPLE).unwrap());
}

#[test]
fn unreadable_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.toml");
    let message = load(&path).unwrap_err().to_string();
    assert!(
        message.starts_with(&format!("{}: ", path.display())),
        "{message}"
    );
    assert!(
        message.contains(&io::Error::from(io::ErrorKind::NotFound).to_string())
            || message.contains("os error 2"),
        "{message}"
    );
}

#[test]
fn check_interface_finds_loopback() {
    assert!(check_interface(Path::new(FILE), "lo").unwrap() > 0);
}

#[test]
fn check_interface_unknown() {
    let message = check_interface(Path::new(FILE), "dnsteer-nx0")
        .unwrap_err()
        .to_string();
    for fragment in [FILE, r#"interface = "dnsteer-nx0""#, "ip link"] {
        assert!(message.contains(fragment), "{message:?} lacks {fragment:?}");
    }
    let message = check_interface(Path::new(FILE), "eth3:1")
        .unwrap_err()
        .to_string();
    assert!(message.contains("address label on eth3"), "{message}");
}

#[test]
fn passive_table() {
    let text = format!(
        "{BASE}[service.passive]\nmax_servfail_ratio = 0.5\nwindow = \"3s\"\nmin_queries = 20\n"
    );
    let passive = parse_str(&text).unwrap().services[0]
        .passive
        .clone()
        .unwrap();
    assert_eq!(
        passive,
        PassiveCheck {
            max_timeout_ratio: None,
            max_servfail_ratio: Some(0.5),
            window: Duration::from_secs(3),
            min_queries: 20,
            eject_for: PassiveCheck::DEFAULT_EJECT_FOR,
        }
    );
    let text = format!("{BASE}[service.passive]\nmax_timeout_ratio = 1\n");
    let passive = parse_str(&text).unwrap().services[0]
        .passive
        .clone()
        .unwrap();
    assert_eq!(passive.max_timeout_ratio, Some(1.0));
    for (body, names) in [
        (
            "window = \"5s\"",
            "passive.max_timeout_ratio or passive.max_servfail_ratio is missing",
        ),
        ("max_timeout_ratio = 0", "passive.max_timeout_ratio = 0"),
        (
            "max_servfail_ratio = 1.5",
            "passive.max_servfail_ratio = 1.5",
        ),
        (
            "max_servfail_ratio = \"half\"",
            "passive.max_servfail_ratio",
        ),
        (
            "max_servfail_ratio = 0.5\nmin_queries = 0",
            "passive.min_queries = 0",
        ),
        (
            "max_servfail_ratio = 0.5\neject_for = \"2h\"",
            "passive.eject_for",
        ),
        ("max_servfail_ratio = 0.5\nwindows = 3", "windows"),
    ] {
        let err = parse_str(&format!("{BASE}[service.passive]\n{body}\n")).unwrap_err();
        let err = err.to_string();
        assert!(
            err.contains("service[0] \"dns\"") || err.contains("windows"),
            "{body}: {err}"
        );
        assert!(err.contains(names), "{body}: {err}");
    }
}

#[test]
fn select_least_outstanding() {
    let text = set("select", "\"least_outstanding\"");
    assert_eq!(
        parse_str(&text).unwrap().services[0].select,
        Select::LeastOutstanding
    );
}

#[test]
fn iface_stands_in_for_a_missing_interface() {
    let text = BASE.replace("interface = \"eth3\"\n", "");
    let message = parse_str(&text).unwrap_err().to_string();
    for fragment in [
        "interface is missing",
        "\"auto\"",
        "--iface",
        "DNSTEER_IFACE",
    ] {
        assert!(message.contains(fragment), "{message:?} lacks {fragment:?}");
    }
    let config = parse_with(&text, Path::new(FILE), Some("ens5")).unwrap();
    assert_eq!(config.interface, "ens5");
    // --iface wins over the file's.
    let config = parse_with(BASE, Path::new(FILE), Some("ens5")).unwrap();
    assert_eq!(config.interface, "ens5");
    // A bad --iface is named as such.
    let message = parse_with(&text, Path::new(FILE), Some("eth3:1"))
        .unwrap_err()
        .to_string();
    assert!(message.starts_with("--iface"), "{message}");
    assert!(message.contains("address label on eth3"), "{message}");
}

#[test]
fn interface_auto_is_kept_for_run_to_choose() {
    let config = parse_str(&set("interface", r#""auto""#)).unwrap();
    assert_eq!(config.interface, AUTO_INTERFACE);
    let config = parse_with(BASE, Path::new(FILE), Some("auto")).unwrap();
    assert_eq!(config.interface, AUTO_INTERFACE);
}

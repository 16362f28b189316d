//! EndpointSlices and a Service turned into what dnsteer steers to: pure
//! functions, so the rules are tested without an API server.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
};

use k8s_openapi::api::{
    core::v1::Service,
    discovery::v1::{Endpoint, EndpointPort, EndpointSlice},
};

use super::{EndpointState, PortRef, Spec};
use crate::config::{Family, Protocol};

/// The desired backends of one service: every address at most once, sorted.
pub type BackendSet = Vec<(SocketAddr, EndpointState)>;

/// What an endpoint's conditions make of it (Kubernetes API conventions:
/// an absent `ready` means ready; `serving` and `terminating` were added
/// for exactly this, see KEP-1672). None: not a backend at all.
pub fn state_of(endpoint: &Endpoint) -> Option<EndpointState> {
    let conditions = endpoint.conditions.as_ref();
    let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
    if ready {
        return Some(EndpointState::Active);
    }
    let serving = conditions.and_then(|c| c.serving).unwrap_or(false);
    let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
    // Not ready but still answering (or on its way out): keeps its flows,
    // takes no new ones, as Cilium does with terminating backends.
    (serving || terminating).then_some(EndpointState::Draining)
}

/// The slice's `addressType` for a family.
fn address_type(family: Family) -> &'static str {
    match family {
        Family::Ipv4 => "IPv4",
        Family::Ipv6 => "IPv6",
    }
}

/// Whether a Kubernetes protocol (absent = TCP) is one the service balances.
fn protocol_matches(protocol: Option<&str>, wanted: Protocol) -> bool {
    let protocol = protocol.unwrap_or("TCP");
    match wanted {
        Protocol::Udp => protocol == "UDP",
        Protocol::Tcp => protocol == "TCP",
        Protocol::UdpTcp => protocol == "UDP" || protocol == "TCP",
    }
}

/// The port number the slice gives `spec.port`, if it has it for the
/// service's protocol. With `udp+tcp` either transport's entry names the
/// port: a dnsteer backend is one address and port for both.
pub fn port_of(ports: &[EndpointPort], spec: &Spec) -> Option<u16> {
    ports
        .iter()
        .filter(|p| protocol_matches(p.protocol.as_deref(), spec.protocol))
        .find_map(|p| {
            let number = u16::try_from(p.port?).ok().filter(|n| *n != 0)?;
            let matches = match &spec.port {
                PortRef::Name(name) => p.name.as_deref().unwrap_or("") == name,
                PortRef::Number(n) => number == *n,
            };
            matches.then_some(number)
        })
}

/// The backends `slices` (all labelled for the service) give `spec`:
/// the endpoints of the service's family at its port, active or draining.
/// An address two slices both list (an endpoint moving between slices)
/// counts once, active if either says so.
pub fn backends<'a>(
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    spec: &Spec,
) -> BackendSet {
    let mut set: BTreeMap<SocketAddr, EndpointState> = BTreeMap::new();
    for slice in slices {
        if slice.address_type != address_type(spec.family) {
            continue;
        }
        let Some(port) = port_of(slice.ports.as_deref().unwrap_or_default(), spec) else {
            continue;
        };
        for endpoint in &slice.endpoints {
            let Some(state) = state_of(endpoint) else {
                continue;
            };
            // Kubernetes puts one address per endpoint ("consumers must
            // handle only the first"); all of them are the same pod.
            let Some(ip) = endpoint
                .addresses
                .first()
                .and_then(|a| a.parse::<IpAddr>().ok())
            else {
                continue;
            };
            if Family::of(ip) != spec.family {
                continue;
            }
            set.entry(SocketAddr::new(ip, port))
                .and_modify(|s| *s = (*s).max(state))
                .or_insert(state);
        }
    }
    set.into_iter().collect()
}

/// How many endpoints the slices list, whatever their conditions, family or
/// ports: what `stats` reports as seen.
pub fn endpoints_seen<'a>(slices: impl IntoIterator<Item = &'a EndpointSlice>) -> usize {
    slices.into_iter().map(|s| s.endpoints.len()).sum()
}

/// The addresses a Service is reached at, of the service's family, at the
/// Service's port for `spec.port`; both empty when the Service has no such
/// port.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceAddrs {
    /// `spec.clusterIP(s)`: virtual, held by no interface, listened on by
    /// every node (a headless Service has none).
    pub cluster: Vec<SocketAddr>,
    /// `spec.externalIPs` and `status.loadBalancer.ingress[].ip`: listened
    /// on where they are addresses of the interface.
    pub outside: Vec<SocketAddr>,
}

pub fn service_addrs(service: &Service, spec: &Spec) -> ServiceAddrs {
    let Some(svc) = service.spec.as_ref() else {
        return ServiceAddrs::default();
    };
    let port = svc.ports.as_deref().unwrap_or_default().iter().find_map(|p| {
        if !protocol_matches(p.protocol.as_deref(), spec.protocol) {
            return None;
        }
        let number = u16::try_from(p.port).ok()?;
        let matches = match &spec.port {
            PortRef::Name(name) => p.name.as_deref().unwrap_or("") == name,
            // A number names the pods' port; the Service may expose it as
            // itself or map another port to it.
            PortRef::Number(n) => {
                number == *n
                    || p.target_port.as_ref().is_some_and(|t| {
                        matches!(t, k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(t) if *t == i32::from(*n))
                    })
            }
        };
        matches.then_some(number)
    });
    let Some(port) = port else {
        return ServiceAddrs::default();
    };
    let at = |ips: &mut dyn Iterator<Item = &String>| {
        let mut out: Vec<SocketAddr> = ips
            // "None" marks a headless Service.
            .filter_map(|ip| ip.parse::<IpAddr>().ok())
            .filter(|ip| Family::of(*ip) == spec.family)
            .map(|ip| SocketAddr::new(ip, port))
            .collect();
        out.sort();
        out.dedup();
        out
    };
    let ingress = service
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.as_ref());
    ServiceAddrs {
        cluster: at(&mut svc.cluster_ips.iter().flatten().chain(&svc.cluster_ip)),
        outside: at(&mut svc.external_ips.iter().flatten().chain(ingress)),
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{
        api::{
            core::v1::{
                LoadBalancerIngress, LoadBalancerStatus, ServicePort, ServiceSpec, ServiceStatus,
            },
            discovery::v1::EndpointConditions,
        },
        apimachinery::pkg::{apis::meta::v1::ObjectMeta, util::intstr::IntOrString},
    };

    use super::*;

    fn spec(port: PortRef, family: Family, protocol: Protocol) -> Spec {
        Spec {
            namespace: "dns".into(),
            service: "bind".into(),
            port,
            family,
            protocol,
        }
    }

    fn dns() -> Spec {
        spec(PortRef::Name("dns".into()), Family::Ipv4, Protocol::Udp)
    }

    fn port(name: &str, number: i32, protocol: &str) -> EndpointPort {
        EndpointPort {
            name: Some(name.into()),
            port: Some(number),
            protocol: Some(protocol.into()),
            ..Default::default()
        }
    }

    fn endpoint(
        ip: &str,
        ready: Option<bool>,
        serving: Option<bool>,
        terminating: Option<bool>,
    ) -> Endpoint {
        Endpoint {
            addresses: vec![ip.into()],
            conditions: Some(EndpointConditions {
                ready,
                serving,
                terminating,
            }),
            ..Default::default()
        }
    }

    fn slice(
        name: &str,
        address_type: &str,
        ports: Vec<EndpointPort>,
        endpoints: Vec<Endpoint>,
    ) -> EndpointSlice {
        EndpointSlice {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            address_type: address_type.into(),
            ports: Some(ports),
            endpoints,
        }
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// The conditions as a table: (ready, serving, terminating) -> state.
    #[test]
    fn conditions() {
        use EndpointState::{Active, Draining};
        let table = [
            ((None, None, None), Some(Active)),
            ((Some(true), None, None), Some(Active)),
            ((Some(true), Some(true), Some(false)), Some(Active)),
            ((Some(false), Some(true), Some(false)), Some(Draining)),
            ((Some(false), Some(true), Some(true)), Some(Draining)),
            ((Some(false), Some(false), Some(true)), Some(Draining)),
            ((Some(false), Some(false), Some(false)), None),
            ((Some(false), None, None), None),
        ];
        for ((ready, serving, terminating), want) in table {
            let e = endpoint("10.0.0.1", ready, serving, terminating);
            assert_eq!(
                state_of(&e),
                want,
                "ready={ready:?} serving={serving:?} terminating={terminating:?}"
            );
        }
        let bare = Endpoint {
            addresses: vec!["10.0.0.1".into()],
            ..Default::default()
        };
        assert_eq!(
            state_of(&bare),
            Some(Active),
            "no conditions at all is ready"
        );
    }

    #[test]
    fn named_port_family_and_protocol() {
        let slices = [
            slice(
                "bind-a",
                "IPv4",
                vec![
                    port("dns", 5353, "UDP"),
                    port("dns-tcp", 5353, "TCP"),
                    port("metrics", 9119, "TCP"),
                ],
                vec![
                    endpoint("10.0.0.2", Some(true), None, None),
                    endpoint("10.0.0.1", None, None, None),
                    endpoint("10.0.0.3", Some(false), Some(false), Some(true)),
                    endpoint("10.0.0.4", Some(false), Some(false), Some(false)),
                ],
            ),
            slice(
                "bind-v6",
                "IPv6",
                vec![port("dns", 53, "UDP")],
                vec![endpoint("fd00::1", None, None, None)],
            ),
            slice(
                "bind-fqdn",
                "FQDN",
                vec![port("dns", 53, "UDP")],
                vec![endpoint("bind.example", None, None, None)],
            ),
            // A slice without the port (a Service's other port set) adds nothing.
            slice(
                "bind-c",
                "IPv4",
                vec![port("http", 80, "TCP")],
                vec![endpoint("10.0.0.9", None, None, None)],
            ),
        ];
        assert_eq!(
            backends(&slices, &dns()),
            vec![
                (addr("10.0.0.1:5353"), EndpointState::Active),
                (addr("10.0.0.2:5353"), EndpointState::Active),
                (addr("10.0.0.3:5353"), EndpointState::Draining),
            ]
        );
        let v6 = spec(PortRef::Name("dns".into()), Family::Ipv6, Protocol::Udp);
        assert_eq!(
            backends(&slices, &v6),
            vec![(addr("[fd00::1]:53"), EndpointState::Active)]
        );
        // `dns` is a UDP port: a TCP service has no such port.
        let tcp = spec(PortRef::Name("dns".into()), Family::Ipv4, Protocol::Tcp);
        assert_eq!(backends(&slices, &tcp), vec![]);
        let both = spec(
            PortRef::Name("dns-tcp".into()),
            Family::Ipv4,
            Protocol::UdpTcp,
        );
        assert_eq!(backends(&slices, &both).len(), 3);
        let numbered = spec(PortRef::Number(5353), Family::Ipv4, Protocol::Udp);
        assert_eq!(backends(&slices, &numbered), backends(&slices, &dns()));
        let wrong = spec(PortRef::Number(53), Family::Ipv4, Protocol::Udp);
        assert_eq!(backends(&slices, &wrong), vec![]);
        assert_eq!(endpoints_seen(&slices), 7);
    }

    #[test]
    fn an_address_in_two_slices_counts_once_active_wins() {
        let ports = || vec![port("dns", 53, "UDP")];
        let slices = [
            slice(
                "a",
                "IPv4",
                ports(),
                vec![endpoint("10.0.0.1", Some(false), Some(true), Some(true))],
            ),
            slice(
                "b",
                "IPv4",
                ports(),
                vec![endpoint("10.0.0.1", Some(true), Some(true), None)],
            ),
        ];
        assert_eq!(
            backends(&slices, &dns()),
            vec![(addr("10.0.0.1:53"), EndpointState::Active)]
        );
        let reversed = [slices[1].clone(), slices[0].clone()];
        assert_eq!(backends(&reversed, &dns()), backends(&slices, &dns()));
    }

    #[test]
    fn a_port_number_out_of_range_or_an_address_that_is_not_one_is_skipped() {
        let slices = [slice(
            "a",
            "IPv4",
            vec![port("dns", 70000, "UDP")],
            vec![endpoint("10.0.0.1", None, None, None)],
        )];
        assert_eq!(backends(&slices, &dns()), vec![]);
        let slices = [slice(
            "a",
            "IPv4",
            vec![port("dns", 53, "UDP")],
            vec![
                endpoint("not-an-ip", None, None, None),
                endpoint("10.0.0.2", None, None, None),
            ],
        )];
        assert_eq!(
            backends(&slices, &dns()),
            vec![(addr("10.0.0.2:53"), EndpointState::Active)]
        );
    }

    #[test]
    fn addresses_from_cluster_external_and_load_balancer_ips() {
        let service = Service {
            spec: Some(ServiceSpec {
                cluster_ip: Some("10.96.0.10".into()),
                cluster_ips: Some(vec!["10.96.0.10".into(), "fd00:96::10".into()]),
                external_ips: Some(vec!["192.0.2.10".into(), "2001:db8::10".into()]),
                ports: Some(vec![
                    ServicePort {
                        name: Some("dns".into()),
                        port: 53,
                        protocol: Some("UDP".into()),
                        target_port: Some(IntOrString::Int(5353)),
                        ..Default::default()
                    },
                    ServicePort {
                        name: Some("dns-tcp".into()),
                        port: 53,
                        protocol: Some("TCP".into()),
                        ..Default::default()
                    },
                ]),
                ..Default::default()
            }),
            status: Some(ServiceStatus {
                load_balancer: Some(LoadBalancerStatus {
                    ingress: Some(vec![
                        LoadBalancerIngress {
                            ip: Some("192.0.2.11".into()),
                            ..Default::default()
                        },
                        LoadBalancerIngress {
                            hostname: Some("lb.example".into()),
                            ..Default::default()
                        },
                        LoadBalancerIngress {
                            ip: Some("192.0.2.10".into()),
                            ..Default::default()
                        },
                    ]),
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let outside = |service: &Service, spec: &Spec| service_addrs(service, spec).outside;
        let want = vec![addr("192.0.2.10:53"), addr("192.0.2.11:53")];
        assert_eq!(outside(&service, &dns()), want);
        assert_eq!(
            service_addrs(&service, &dns()).cluster,
            vec![addr("10.96.0.10:53")]
        );
        assert_eq!(
            service_addrs(
                &service,
                &spec(PortRef::Name("dns".into()), Family::Ipv6, Protocol::Udp)
            ),
            ServiceAddrs {
                cluster: vec![addr("[fd00:96::10]:53")],
                outside: vec![addr("[2001:db8::10]:53")],
            }
        );
        let mut headless = service.clone();
        if let Some(spec) = headless.spec.as_mut() {
            spec.cluster_ip = Some("None".into());
            spec.cluster_ips = Some(vec!["None".into()]);
        }
        assert_eq!(service_addrs(&headless, &dns()).cluster, vec![]);
        // The pods' port number finds the Service port that targets it.
        assert_eq!(
            outside(
                &service,
                &spec(PortRef::Number(5353), Family::Ipv4, Protocol::Udp)
            ),
            want
        );
        assert_eq!(
            service_addrs(
                &service,
                &spec(PortRef::Name("nope".into()), Family::Ipv4, Protocol::Udp)
            ),
            ServiceAddrs::default()
        );
        assert_eq!(
            service_addrs(&Service::default(), &dns()),
            ServiceAddrs::default()
        );
    }
}

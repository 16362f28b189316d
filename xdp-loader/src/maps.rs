//! From a validated config to map contents (the plan), and from the plan into
//! the loaded program's maps.
//!
//! The plan is plain data so it is unit tested without a kernel; `apply` is the
//! only place that writes configuration maps.

use std::collections::BTreeMap;

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    maps::{Array, HashMap},
};
use xdp_common::{
    Backend, Endpoint, SERVICE_NAME_LEN, SelectMode, ServiceConf, backend_slot, names,
};

use crate::config::{Config, Select};

/// Every configuration map entry a config produces.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub services: Vec<(Endpoint, u32)>,
    pub confs: Vec<(u32, ServiceConf)>,
    pub backends: Vec<(u32, Backend)>,
    /// Backend endpoint -> how many slots point at it.
    pub sources: BTreeMap<[u8; 8], (Endpoint, u32)>,
}

impl Plan {
    /// Service ids are the services' positions in the config.
    pub fn new(config: &Config) -> Self {
        let mut plan = Plan::default();
        for (id, service) in (0u32..).zip(&config.services) {
            let proto = service.protocol.ip_proto();
            for listen in &service.listen {
                let addr = listen.addr.map_or([0; 4], |a| a.octets());
                plan.services
                    .push((Endpoint::new(addr, listen.port.to_be_bytes(), proto), id));
            }
            let select = match service.select {
                Select::Nth => SelectMode::Nth,
                Select::Random => SelectMode::Random,
            };
            let backend_count = service.backends.len() as u32;
            plan.confs
                .push((id, conf(&service.name, proto, select, backend_count)));
            for (index, addr) in (0u32..).zip(&service.backends) {
                let (ip, port) = (addr.ip().octets(), addr.port().to_be_bytes());
                plan.backends.push((
                    backend_slot(id, index),
                    Backend {
                        addr: ip,
                        port,
                        _pad: [0; 2],
                    },
                ));
                let source = Endpoint::new(ip, port, proto);
                let key = [ip[0], ip[1], ip[2], ip[3], port[0], port[1], proto, 0];
                plan.sources.entry(key).or_insert((source, 0)).1 += 1;
            }
        }
        plan
    }

    /// Writes the plan into freshly loaded (empty) maps. Backends and their
    /// sources go in before the services that point at them, so a packet that
    /// matches a service always finds its backends.
    pub fn apply(&self, ebpf: &mut Ebpf) -> Result<()> {
        let mut backends: Array<_, Backend> = typed(ebpf, names::BACKENDS)?;
        for (slot, backend) in &self.backends {
            backends
                .set(*slot, backend, 0)
                .with_context(|| format!("writing backend slot {slot}"))?;
        }
        let mut sources: HashMap<_, Endpoint, u32> = typed(ebpf, names::BACKEND_SOURCES)?;
        for (source, count) in self.sources.values() {
            sources
                .insert(source, count, 0)
                .context("writing a backend source")?;
        }
        let mut confs: Array<_, ServiceConf> = typed(ebpf, names::SERVICE_CONF)?;
        for (id, conf) in &self.confs {
            confs
                .set(*id, conf, 0)
                .with_context(|| format!("writing service {id}"))?;
        }
        let mut services: HashMap<_, Endpoint, u32> = typed(ebpf, names::SERVICES)?;
        for (listen, id) in &self.services {
            services
                .insert(listen, id, 0)
                .with_context(|| format!("writing listen entry of service {id}"))?;
        }
        Ok(())
    }
}

/// A service's kernel-side record.
fn conf(name: &str, proto: u8, select: SelectMode, backend_count: u32) -> ServiceConf {
    let mut conf = ServiceConf {
        backend_count,
        select: select as u32,
        proto,
        in_use: 1,
        ..Default::default()
    };
    // Config validation keeps names below SERVICE_NAME_LEN; the NUL pad stays.
    let len = name.len().min(SERVICE_NAME_LEN - 1);
    conf.name[..len].copy_from_slice(&name.as_bytes()[..len]);
    conf
}

/// A typed view of one of the object's maps, by name.
pub fn typed<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<T>
where
    T: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .map_mut(name)
        .with_context(|| format!("the eBPF object has no map {name}"))?;
    T::try_from(map).with_context(|| format!("map {name} has an unexpected type"))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config;

    const EXAMPLE: &str = r#"
interface = "lo"
[[service]]
name = "dns"
listen = ["192.0.2.10:53", "192.0.2.11:53"]
select = "random"
backends = ["10.100.13.2:53", "10.100.13.3:5353"]

[[service]]
name = "any"
listen = ["*:5300"]
backends = ["10.100.13.2:53"]
"#;

    #[test]
    fn shipped_example_is_valid() {
        let example = include_str!("../../examples/dnsteer.toml");
        let config = config::parse(example, Path::new("examples/dnsteer.toml")).unwrap();
        let plan = Plan::new(&config);
        assert_eq!(
            (plan.services.len(), plan.backends.len(), plan.sources.len()),
            (2, 4, 4)
        );
    }

    #[test]
    fn plan_lays_out_services_and_backends() {
        let config = config::parse(EXAMPLE, Path::new("test.toml")).unwrap();
        let plan = Plan::new(&config);
        assert_eq!(
            plan.services,
            vec![
                (Endpoint::new([192, 0, 2, 10], 53u16.to_be_bytes(), 17), 0),
                (Endpoint::new([192, 0, 2, 11], 53u16.to_be_bytes(), 17), 0),
                (Endpoint::new([0; 4], 5300u16.to_be_bytes(), 17), 1),
            ]
        );
        assert_eq!(
            (plan.confs[0].1.backend_count, plan.confs[0].1.select),
            (2, SelectMode::Random as u32)
        );
        assert_eq!(
            (plan.confs[1].1.backend_count, plan.confs[1].1.select),
            (1, SelectMode::Nth as u32)
        );
        assert_eq!(
            plan.backends[1],
            (
                backend_slot(0, 1),
                Backend {
                    addr: [10, 100, 13, 3],
                    port: 5353u16.to_be_bytes(),
                    _pad: [0; 2]
                }
            )
        );
        assert_eq!(plan.backends[2].0, backend_slot(1, 0));
        // 10.100.13.2:53 serves both services: one source entry, used twice.
        let shared = plan
            .sources
            .values()
            .find(|(e, _)| e.addr == [10, 100, 13, 2])
            .unwrap();
        assert_eq!((plan.sources.len(), shared.1), (2, 2));
        assert_eq!(&plan.confs[1].1.name[..4], b"any\0");
    }
}

//! `dnsteer`: a DNS load balancer in XDP. See README.md.

use std::{net::SocketAddr, path::PathBuf, time::Instant};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};
use dnsteer::{
    config::{self, BackendSpec, XdpModeSetting},
    control::{self, Op, Request},
    daemon::{RunOptions, run},
    datapath::pins::Instance,
    doctor,
    observe::stats,
};

#[derive(Debug, Parser)]
#[command(
    name = "dnsteer",
    version,
    about = "Steers UDP/53 queries to DNS backends from XDP"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List or change the backends of a running instance's service.
    Backends {
        /// The instance's interface; optional when only one runs in this network namespace.
        #[arg(long, global = true)]
        iface: Option<String>,
        /// The service; optional when the instance has only one.
        #[arg(long, global = true)]
        service: Option<String>,
        /// Print the instance's answer as JSON (schema in README.md).
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        action: BackendAction,
    },
    /// Load the programs on the configured interface and steer until SIGINT/SIGTERM.
    Run {
        /// The TOML config (see examples/dnsteer.toml).
        #[arg(long, short)]
        config: PathBuf,
        /// Overrides `interface` from the config, which may then leave it
        /// out; "auto" as there.
        #[arg(long, env = "DNSTEER_IFACE")]
        iface: Option<String>,
        /// Overrides `xdp_mode` from the config: auto, driver or skb.
        #[arg(long, value_parser = clap::builder::ValueParser::new(|s: &str| s.parse::<XdpModeSetting>()))]
        xdp_mode: Option<XdpModeSetting>,
        /// Serve Prometheus metrics on http://ADDR:PORT/metrics, e.g. 127.0.0.1:9153.
        #[arg(long, value_name = "ADDR:PORT")]
        metrics_listen: Option<SocketAddr>,
        /// Leave the data path running on exit (also after a crash), and adopt
        /// one left running; `dnsteer stop` removes it. Same as `persist = true`.
        #[arg(long)]
        persist: bool,
        /// The cluster for services with `kubernetes = { ... }`; without it,
        /// KUBECONFIG, ~/.kube/config, then the in-cluster service account.
        #[arg(long, value_name = "FILE")]
        kubeconfig: Option<PathBuf>,
        /// Overrides `[sockets] cgroup`: "auto" (the cgroup v2 root), "off",
        /// or a cgroup v2 directory whose processes' sockets are steered.
        #[arg(long, env = "DNSTEER_CGROUP", value_name = "auto|off|PATH", value_parser = clap::builder::ValueParser::new(|s: &str| s.parse::<dnsteer::config::SocketCgroup>()))]
        cgroup: Option<dnsteer::config::SocketCgroup>,
    },
    /// Detach dnsteer from an interface and remove its pins: asks a running
    /// `dnsteer run` to exit, or removes a persistent data path left running.
    Stop {
        /// The interface; optional when only one instance runs.
        #[arg(long)]
        iface: Option<String>,
    },
    /// Check what on this host makes backends drop steered queries (socket
    /// receive buffers, the interface's driver); run it on the node and in a
    /// backend's network namespace.
    Doctor {
        /// The interface dnsteer steers on (default: the config's, if given).
        #[arg(long)]
        iface: Option<String>,
        /// A dnsteer config to take the interface and `xdp_mode` from.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Print where every packet went, from a running instance's pinned maps.
    Stats {
        /// The instance's interface; optional when only one runs.
        #[arg(long)]
        iface: Option<String>,
        /// Machine-readable output (schema in README.md).
        #[arg(long)]
        json: bool,
        /// Show every CPU's counters, not only their sums.
        #[arg(long)]
        per_cpu: bool,
        /// Print again every SECS seconds, with rates, until interrupted.
        #[arg(long, value_name = "SECS")]
        watch: Option<f64>,
    },
}

#[derive(Debug, Subcommand)]
enum BackendAction {
    /// Show each backend's address, state and weight.
    List,
    /// Add a backend, or set the weight of one already there (reactivating it if draining).
    Add {
        /// IPV4:PORT or [IPV6]:PORT, of the service's family
        #[arg(value_parser = parse_addr)]
        backend: String,
        /// 1 to 100; 0 adds it draining.
        #[arg(long, default_value_t = 1)]
        weight: u32,
    },
    /// Remove a backend: it takes no new flows and its flows move on their next packet.
    Remove {
        #[arg(value_parser = parse_addr)]
        backend: String,
    },
    /// Drain a backend (weight 0): it takes no new flows and keeps its flows until they go idle.
    Drain {
        #[arg(value_parser = parse_addr)]
        backend: String,
    },
    /// Replace the whole set: ADDR:PORT[=WEIGHT],... (IPv6 as [ADDR]:PORT)
    Set {
        #[arg(value_delimiter = ',', required = true, value_parser = parse_spec)]
        backends: Vec<String>,
    },
}

fn parse_addr(s: &str) -> Result<String, String> {
    config::parse_backend_addr(s).map(|a| a.to_string())
}

fn parse_spec(s: &str) -> Result<String, String> {
    s.parse::<BackendSpec>().map(|b| b.to_string())
}

fn backends_command(
    iface: Option<String>,
    service: Option<String>,
    json: bool,
    action: BackendAction,
) -> Result<()> {
    let iface = control::pick_interface(iface.as_deref())?;
    let op = match action {
        BackendAction::List => Op::List,
        BackendAction::Add { backend, weight } => Op::Add {
            backend,
            weight: Some(weight),
        },
        BackendAction::Remove { backend } => Op::Remove { backend },
        BackendAction::Drain { backend } => Op::Drain { backend },
        BackendAction::Set { backends } => Op::Set { backends },
    };
    let request = Request {
        service: service.unwrap_or_default(),
        op,
    };
    let response = control::request(&iface, &request)?;
    if json {
        println!("{}", serde_json::to_string(&response)?);
    }
    if !response.ok {
        bail!(
            "dnsteer on {iface}: {}",
            response.error.as_deref().unwrap_or("request failed")
        );
    }
    if !json {
        if let Some(message) = &response.message {
            println!("{message}");
        }
        if response.fail_open {
            println!(
                "FAILING OPEN: every backend of {} failed its health checks; all take new flows",
                response.service
            );
        }
        let w = stats::address_width(response.backends.iter().map(|b| b.address.as_str()));
        println!("{:<w$} {:<9} {:>6}  health", "backend", "state", "weight");
        for b in &response.backends {
            let health = b
                .health
                .as_ref()
                .map_or_else(|| "-".to_owned(), stats::health_text);
            println!("{:<w$} {:<9} {:>6}  {health}", b.address, b.state, b.weight);
        }
    }
    Ok(())
}

fn stats_command(
    iface: Option<String>,
    json: bool,
    per_cpu: bool,
    watch: Option<f64>,
) -> Result<()> {
    let interval = match watch {
        Some(secs) if !(secs > 0.0 && secs.is_finite()) => {
            bail!("--watch {secs}: give a positive number of seconds")
        }
        Some(secs) => Some(std::time::Duration::from_secs_f64(secs)),
        None => None,
    };
    // Without --iface, a daemon's control socket in this namespace names it.
    let iface = iface.or_else(|| control::pick_interface(None).ok());
    let instance = Instance::find(iface.as_deref())?;
    if !instance.live && instance.persistent {
        eprintln!(
            "warning: no `dnsteer run` manages the persistent data path pinned at {}; it steers with the state it was left in, without health probes or changes, until `dnsteer run --persist` adopts it",
            instance.location
        );
    } else if !instance.live {
        eprintln!(
            "warning: no dnsteer process holds {}; these counters were left by an instance that exited uncleanly",
            instance.location
        );
    }
    let mut previous: Option<(stats::Snapshot, Instant)> = None;
    loop {
        let mut snapshot = stats::read(&instance, per_cpu)?;
        if instance.live {
            add_health(&mut snapshot);
        }
        let now = Instant::now();
        if json {
            // One document per line, also under --watch (NDJSON).
            println!(
                "{}",
                serde_json::to_string(&snapshot).context("encoding JSON")?
            );
        } else {
            let prev = previous.as_ref().map(|(s, t)| (s, now - *t));
            if interval.is_some() {
                print!("\x1b[2J\x1b[H");
            }
            print!("{}", stats::render(&snapshot, prev));
        }
        let Some(interval) = interval else {
            return Ok(());
        };
        previous = Some((snapshot, now));
        std::thread::sleep(interval);
    }
}

fn stop_command(iface: Option<String>) -> Result<()> {
    // A daemon in this namespace is asked; it detaches and unpins on its way out.
    let daemon = match &iface {
        Some(iface) => control::running_interfaces()
            .contains(iface)
            .then(|| iface.clone()),
        None => control::pick_interface(None).ok(),
    };
    if let Some(iface) = daemon {
        let request = Request {
            service: String::new(),
            op: Op::Stop,
        };
        let response = control::request(&iface, &request)?;
        if !response.ok {
            bail!(
                "dnsteer on {iface}: {}",
                response.error.as_deref().unwrap_or("stop refused")
            );
        }
        // It answers before it detaches: wait for it to be gone.
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        while control::running_interfaces().contains(&iface) {
            if Instant::now() > deadline {
                bail!("dnsteer on {iface} did not exit within 10 s of `stop`");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        println!("dnsteer on {iface}: stopped and detached");
        return Ok(());
    }
    // No daemon: a persistent data path it left behind, found by its pins.
    let found = Instance::find(iface.as_deref())?;
    let pins = dnsteer::datapath::pins::Pins::claim(&found.iface)?;
    let persisted = pins.persisted();
    if pins.clear("dnsteer stop")? == 0 {
        bail!(
            "no dnsteer on {}: none runs in this network namespace and nothing is pinned under {}",
            found.iface,
            pins.dir().display()
        );
    }
    drop(pins);
    if !persisted {
        println!(
            "dnsteer on {}: removed the pins an instance left",
            found.iface
        );
        return Ok(());
    }
    println!(
        "dnsteer on {}: the persistent data path is detached and its pins removed",
        found.iface
    );
    Ok(())
}

/// Asks the running daemon for each service's health; without one (an
/// instance that exited uncleanly) health stays null.
fn add_health(snapshot: &mut stats::Snapshot) {
    for service in &mut snapshot.services {
        let request = Request {
            service: service.name.clone(),
            op: Op::List,
        };
        if let Ok(response) = control::request(&snapshot.interface, &request)
            && response.ok
        {
            stats::add_health(service, response.fail_open, &response.backends);
            service.kubernetes = response.kubernetes;
        }
    }
}

fn main() -> Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match Cli::parse().command {
        Command::Backends {
            iface,
            service,
            json,
            action,
        } => backends_command(iface, service, json, action),
        Command::Run {
            config,
            iface,
            xdp_mode,
            metrics_listen,
            persist,
            kubeconfig,
            cgroup,
        } => {
            doctor::log_at_start(&config, iface.as_deref(), xdp_mode);
            // Two workers: probes keep their timing while the run loop waits out
            // a change's grace periods.
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            runtime.block_on(run(RunOptions {
                config,
                iface,
                xdp_mode,
                metrics_listen,
                persist,
                kubeconfig,
                cgroup,
            }))
        }
        Command::Stop { iface } => stop_command(iface),
        Command::Doctor { iface, config } => {
            let config = config
                .map(|p| config::load_with(&p, iface.as_deref()))
                .transpose()?;
            let iface = match config.as_ref() {
                Some(c) if c.interface == config::AUTO_INTERFACE => {
                    Some(dnsteer::datapath::uplink::choose(c)?.0)
                }
                Some(c) => Some(c.interface.clone()),
                None => iface,
            };
            let mode = config.as_ref().map_or(XdpModeSetting::Auto, |c| c.xdp_mode);
            for line in doctor::report(iface.as_deref(), mode) {
                println!("{line}");
            }
            // The maps' memory on this node, for the config's table sizes (or the defaults).
            let (limits, flows) = config.map_or_else(
                || (Default::default(), config::FlowSettings::default().size),
                |c| (c.limits, c.flows.size),
            );
            for line in dnsteer::datapath::memory::report(&limits, flows) {
                println!("{line}");
            }
            Ok(())
        }
        Command::Stats {
            iface,
            json,
            per_cpu,
            watch,
        } => stats_command(iface, json, per_cpu, watch),
    }
}

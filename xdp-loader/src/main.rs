//! `dnsteer`: a DNS load balancer in XDP. See README.md.

use std::{path::PathBuf, time::Instant};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};
use dnsteer::{
    config::XdpModeSetting,
    pins::Instance,
    run::{RunOptions, run},
    stats,
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
    /// Load the programs on the configured interface and steer until SIGINT/SIGTERM.
    Run {
        /// The TOML config (see examples/dnsteer.toml).
        #[arg(long, short)]
        config: PathBuf,
        /// Overrides `interface` from the config.
        #[arg(long)]
        iface: Option<String>,
        /// Overrides `xdp_mode` from the config: auto, driver or skb.
        #[arg(long, value_parser = clap::builder::ValueParser::new(|s: &str| s.parse::<XdpModeSetting>()))]
        xdp_mode: Option<XdpModeSetting>,
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
    let instance = Instance::find(iface.as_deref())?;
    if !instance.live {
        eprintln!(
            "warning: no dnsteer process holds {}; these counters were left by an instance that exited uncleanly",
            instance.location
        );
    }
    let mut previous: Option<(stats::Snapshot, Instant)> = None;
    loop {
        let snapshot = stats::read(&instance, per_cpu)?;
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

fn main() -> Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match Cli::parse().command {
        Command::Run {
            config,
            iface,
            xdp_mode,
        } => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            runtime.block_on(run(RunOptions {
                config,
                iface,
                xdp_mode,
            }))
        }
        Command::Stats {
            iface,
            json,
            per_cpu,
            watch,
        } => stats_command(iface, json, per_cpu, watch),
    }
}

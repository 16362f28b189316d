//! `cargo xtask`: build, run, demo, test and bench dnsteer from a fresh clone.
//!
//! Every command first makes sure the toolchain pieces the kernel side needs are
//! present (see `bootstrap`), so `git clone` + one command is enough.

mod bench;
mod bootstrap;
mod demo;

use std::process::Command;

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Install missing build tools (nightly rust-src, bpf-linker) and build everything.
    Build,
    /// Build, then run `dnsteer run` with the given arguments (as root).
    Run {
        /// Arguments for `dnsteer run`, after `--`: e.g. `-- --config dnsteer.toml`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build a throwaway topology in network namespaces and show dnsteer balancing it (as root).
    Demo {
        /// Queries per mode.
        #[arg(long, default_value_t = 4000)]
        queries: usize,
    },
    /// Run every test: host unit tests, BPF_PROG_TEST_RUN tables, end to end (as root).
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter), after `--`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Measure every steering method side by side (iptables, kube-proxy, nftables,
    /// dnsteer) and write bench/results, bench/plots and docs/BENCHMARKS.md (as root).
    Bench {
        /// A smoke test in under 3 minutes: few methods and short steps; writes
        /// under target/bench-quick/ instead of the report.
        #[arg(long)]
        quick: bool,
        /// Only these parts, comma-separated: method ids (see docs/BENCHMARKS.md),
        /// `prog-cost`, `bind`; writes under target/bench-partial/.
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
    },
}

/// Runs a command to completion, failing with its command line if it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// Builds the workspace's binaries (the eBPF object is built by xdp-loader's build script).
fn build() -> Result<std::path::PathBuf> {
    bootstrap::toolchain()?;
    run(cargo().args(["build", "--package", "xdp-loader"]))?;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    root.join("target/debug/dnsteer")
        .canonicalize()
        .context("locating target/debug/dnsteer")
}

fn require_root(what: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "{what} needs root (it loads BPF programs and makes network namespaces); rerun with sudo"
        );
    }
    Ok(())
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Task::Build => build().map(|_| ()),
        Task::Run { args } => {
            let dnsteer = build()?;
            require_root("dnsteer run")?;
            run(Command::new(dnsteer).arg("run").args(args))
        }
        Task::Demo { queries } => {
            require_root("the demo")?;
            bootstrap::test_tools()?;
            let dnsteer = build()?;
            demo::run(&dnsteer, queries)
        }
        Task::Test { args } => {
            require_root("the test suite")?;
            bootstrap::test_tools()?;
            let dnsteer = build()?;
            run(cargo()
                // xdp-ebpf only builds for the bpf target (xdp-loader's build script does that).
                .args([
                    "test",
                    "--workspace",
                    "--exclude",
                    "xdp-ebpf",
                    "--no-fail-fast",
                ])
                .env("DNSTEER_BIN", &dnsteer)
                .arg("--")
                .args(args))
        }
        Task::Bench { quick, only } => {
            require_root("the bench")?;
            bootstrap::test_tools()?;
            bootstrap::bench_tools()?;
            let dnsteer = build()?;
            let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
            bench::run(
                &dnsteer,
                &bench::Options {
                    quick,
                    only,
                    root: root
                        .canonicalize()
                        .context("locating the repository root")?,
                },
            )
        }
    }
}

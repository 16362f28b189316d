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
    /// Install missing build tools (the pinned nightly, its rust-src, bpf-linker) and build
    /// `dnsteer` with the locked dependencies.
    Build {
        /// The cargo profile: dev (target/debug) or release (target/release, what the image ships).
        #[arg(long, default_value = "dev", value_parser = ["dev", "release"])]
        profile: String,
    },
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
        /// Measure nothing: write docs/BENCHMARKS.md and the plots again from a
        /// results file of an earlier run (bench/results/<date>-<host>.json).
        #[arg(long, value_name = "JSON", conflicts_with_all = ["quick", "only"])]
        render: Option<std::path::PathBuf>,
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
    build_profile("dev")
}

/// `build` in cargo profile `profile`, with Cargo.lock as it is.
fn build_profile(profile: &str) -> Result<std::path::PathBuf> {
    bootstrap::toolchain()?;
    run(cargo().args([
        "build",
        "--locked",
        "--profile",
        profile,
        "--package",
        "xdp-loader",
    ]))?;
    let dir = if profile == "dev" { "debug" } else { profile };
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    root.join("target")
        .join(dir)
        .join("dnsteer")
        .canonicalize()
        .with_context(|| format!("locating target/{dir}/dnsteer"))
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
        Task::Build { profile } => {
            let dnsteer = build_profile(&profile)?;
            println!("{}", dnsteer.display());
            Ok(())
        }
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
        Task::Bench {
            quick,
            only,
            render,
        } => {
            let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .canonicalize()
                .context("locating the repository root")?;
            if let Some(json) = render {
                return bench::render(&json, &root);
            }
            require_root("the bench")?;
            bootstrap::test_tools()?;
            bootstrap::bench_tools()?;
            let dnsteer = build()?;
            bench::run(&dnsteer, &bench::Options { quick, only, root })
        }
    }
}

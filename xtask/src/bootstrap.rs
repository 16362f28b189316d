//! Installs what a fresh machine with only the Rust toolchains lacks. Each step
//! checks first and does nothing when its piece is already there.

use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, anyhow, bail};

use crate::run;

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("starting {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether `program` is in $PATH or an sbin directory (`sudo` and CI often drop those).
fn on_path(program: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(Into::into))
        .any(|dir| dir.join(program).is_file())
}

fn found(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

include!("../../xdp-ebpf/nightly.rs");

/// The pinned nightly (`xdp-ebpf/rust-toolchain.toml`) as rustup names it here.
pub fn nightly() -> Result<String> {
    let ebpf_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../xdp-ebpf");
    ebpf_toolchain(&ebpf_dir).map_err(|e| anyhow!(e))
}

/// The pinned nightly with its rust-src (for `-Z build-std=core`) and a
/// bpf-linker built against that toolchain's own libLLVM, so the two agree on
/// the LLVM version.
pub fn toolchain() -> Result<()> {
    let nightly = nightly()?;
    let installed = match output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        &nightly,
        "--installed",
    ])) {
        Ok(installed) => installed,
        Err(_) => {
            eprintln!(
                "xtask: installing the pinned nightly {nightly} (xdp-ebpf/rust-toolchain.toml)"
            );
            run(Command::new("rustup").args([
                "toolchain",
                "install",
                &nightly,
                "--profile",
                "minimal",
                "--component",
                "rust-src",
            ]))?;
            output(Command::new("rustup").args([
                "component",
                "list",
                "--toolchain",
                &nightly,
                "--installed",
            ]))?
        }
    };
    if !installed.lines().any(|l| l.starts_with("rust-src")) {
        eprintln!("xtask: installing rust-src for {nightly}");
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            &nightly,
        ]))?;
    }
    if found("bpf-linker") {
        return Ok(());
    }
    let sysroot =
        output(Command::new("rustup").args(["run", &nightly, "rustc", "--print", "sysroot"]))?;
    let lib_dir = std::path::Path::new(sysroot.trim()).join("lib");
    let lib = std::fs::read_dir(&lib_dir)
        .with_context(|| format!("listing {}", lib_dir.display()))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .find(|name| {
            name.starts_with("libLLVM-") && name.contains("-rust-") && name.ends_with(".so")
        })
        .ok_or_else(|| {
            anyhow!(
                "no libLLVM-*-rust-*.so in {}; is the nightly toolchain complete?",
                lib_dir.display()
            )
        })?;
    let major = lib
        .trim_start_matches("libLLVM-")
        .split(['-', '.'])
        .next()
        .filter(|m| m.chars().all(|c| c.is_ascii_digit()))
        .ok_or_else(|| anyhow!("cannot read the LLVM version from {lib}"))?
        .to_owned();
    let link_name = lib.trim_start_matches("lib").trim_end_matches(".so");
    let dir = lib_dir.display();
    eprintln!("xtask: installing bpf-linker 0.13 against {nightly}'s {lib} (about a minute)");
    run(Command::new("cargo")
        .args([
            "install",
            "--locked",
            "bpf-linker",
            "--version",
            "^0.13",
            "--no-default-features",
        ])
        .args(["--features", &format!("llvm-{major},no-llvm-linking")])
        .env(
            "RUSTFLAGS",
            format!("-C link-arg=-L{dir} -C link-arg=-l{link_name} -C link-arg=-Wl,-rpath,{dir}"),
        ))
}

/// The programs the demo and the end-to-end tests drive, from Debian's packages.
pub fn test_tools() -> Result<()> {
    const TOOLS: [(&str, &str); 7] = [
        ("ip", "iproute2"),
        ("sysctl", "procps"),
        ("named", "bind9"),
        ("kdig", "knot-dnsutils"),
        // Turns on GRO on the backends' veths, which XDP_REDIRECT into a veth needs.
        ("ethtool", "ethtool"),
        // Writes a map of another layout where the restarts test pins one.
        ("bpftool", "bpftool"),
        // Makes the CA and certificates of the HTTPS API server double.
        ("openssl", "openssl"),
    ];
    let missing: Vec<&str> = TOOLS
        .iter()
        .filter(|(tool, _)| !found(tool))
        .map(|(_, pkg)| *pkg)
        .collect();
    install(&missing, "missing")
}

/// Installs Debian's `packages` with apt-get, or says, after `what`, which
/// to install where there is no apt-get.
fn install(packages: &[&str], what: &str) -> Result<()> {
    if packages.is_empty() {
        return Ok(());
    }
    if !found("apt-get") {
        bail!(
            "{what} {}; install them with your package manager",
            packages.join(", ")
        );
    }
    eprintln!(
        "xtask: installing {} from Debian's packages",
        packages.join(", ")
    );
    run(Command::new("apt-get").arg("update").arg("-q"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// What `cargo xtask bench` drives besides the test tools: the methods it
/// compares, the load generators, and the plots' font.
pub fn bench_tools() -> Result<()> {
    const TOOLS: [(&str, &str); 5] = [
        ("iptables", "iptables"),
        ("nft", "nftables"),
        ("conntrack", "conntrack"),
        ("kxdpgun", "knot-dnsutils"),
        (
            "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
            "fonts-dejavu-core",
        ),
    ];
    let mut missing: Vec<&str> = TOOLS
        .iter()
        .filter(|(tool, _)| match tool.strip_prefix('/') {
            Some(_) => !std::path::Path::new(tool).exists(),
            None => !on_path(tool),
        })
        .map(|(_, pkg)| *pkg)
        .collect();
    missing.dedup();
    install(&missing, "the bench needs")
}

//! The image's build, checked where no container runtime can pull images: the
//! Dockerfile's build stage uses the stable release `rust-toolchain.toml`
//! pins and runs `deploy/build.sh`, once; every `cargo install` is
//! `--locked`; the final stage runs as an unprivileged user by default; the
//! pinned nightly is this machine's and its LLVM is one bpf-linker 0.13 links
//! with; and `deploy/build.sh` itself runs here and gives a working `dnsteer`
//! (in the dev profile, which reuses this machine's build; the image's is
//! `release`, the same commands).

use std::{path::PathBuf, process::Command};

use testbed::TempDir;

include!("../../xdp-ebpf/nightly.rs");

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap()
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// `channel = "..."` of a rust-toolchain.toml.
fn channel(text: &str) -> String {
    text.lines()
        .find_map(|l| l.trim().strip_prefix("channel"))
        .and_then(|l| l.trim_start().strip_prefix('='))
        .map(|v| v.trim().trim_matches('"').to_owned())
        .expect("channel = ...")
}

/// The Dockerfile's instructions, continuation lines joined.
fn dockerfile() -> Vec<String> {
    let text = read("Dockerfile").replace("\\\n", " ");
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

#[test]
fn dockerfile_builds_once_with_the_pinned_toolchains() {
    let lines = dockerfile();
    let stable = channel(&read("rust-toolchain.toml"));
    assert!(
        stable.split('.').count() == 3,
        "rust-toolchain.toml pins a release, not {stable}"
    );
    let from: Vec<&String> = lines.iter().filter(|l| l.starts_with("FROM ")).collect();
    assert!(
        from[0].starts_with(&format!("FROM rust:{stable}-")),
        "the build stage's image is Rust {stable}, as rust-toolchain.toml pins: {}",
        from[0]
    );
    let runs: Vec<&String> = lines.iter().filter(|l| l.starts_with("RUN ")).collect();
    let builds: Vec<&&String> = runs
        .iter()
        .filter(|l| l.contains("cargo") || l.contains("deploy/build.sh"))
        .collect();
    assert_eq!(builds.len(), 1, "one build step: {builds:?}");
    assert!(
        builds[0].contains("deploy/build.sh") && builds[0].contains("release"),
        "the build step is deploy/build.sh in the release profile: {}",
        builds[0]
    );
    assert!(
        !builds[0].contains("rustup toolchain install nightly "),
        "the nightly comes from xdp-ebpf/rust-toolchain.toml, not an unpinned install"
    );
    // Every `cargo install` on the way: the Dockerfile's, the script's, and
    // xtask's of bpf-linker (written as `.args(["install", "--locked", ...])`).
    for file in ["Dockerfile", "deploy/build.sh"] {
        let flat = read(file).split_whitespace().collect::<Vec<_>>().join(" ");
        for (i, _) in flat.match_indices("cargo install") {
            let rest = &flat[i..flat.len().min(i + 80)];
            assert!(
                rest.contains("--locked"),
                "{file}: `{rest}` without --locked"
            );
        }
    }
    let bootstrap: String = read("xtask/src/bootstrap.rs")
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '"')
        .collect();
    assert!(
        bootstrap.contains("install,--locked,bpf-linker"),
        "xtask installs bpf-linker with --locked"
    );
    // The final stage runs as a user other than root unless told otherwise.
    let last = lines.iter().rposition(|l| l.starts_with("FROM ")).unwrap();
    let user = lines[last..]
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("a USER in the final stage");
    assert!(!["0", "root"].contains(&user.trim()), "USER {user}");
}

#[test]
fn the_pinned_nightly_is_this_machines_and_bpf_linker_links_with_its_llvm() {
    let ebpf_dir = root().join("xdp-ebpf");
    let pinned = pinned_nightly(&ebpf_dir).unwrap();
    assert_eq!(pinned, channel(&read("xdp-ebpf/rust-toolchain.toml")));
    let name = ebpf_toolchain(&ebpf_dir).unwrap();
    let sysroot = Command::new("rustup")
        .args(["run", &name, "rustc", "--print", "sysroot"])
        .output()
        .expect("rustup");
    assert!(
        sysroot.status.success(),
        "the pinned nightly {pinned} (as {name}) is not installed here: {}",
        String::from_utf8_lossy(&sysroot.stderr)
    );
    let sysroot = PathBuf::from(String::from_utf8(sysroot.stdout).unwrap().trim());
    let manifest =
        std::fs::read_to_string(sysroot.join("lib/rustlib/multirust-channel-manifest.toml"))
            .expect("the toolchain's channel manifest");
    let date = pinned.trim_start_matches("nightly-");
    assert!(
        manifest.lines().any(|l| l == format!("date = \"{date}\"")),
        "{name} is not the nightly of {date}"
    );
    let llvm: u32 = std::fs::read_dir(sysroot.join("lib"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .find_map(|n| n.strip_prefix("libLLVM-")?.split('-').next()?.parse().ok())
        .expect("the nightly's libLLVM");
    assert!(
        (21..=23).contains(&llvm),
        "bpf-linker 0.13 links with LLVM 21 to 23; {pinned} has LLVM {llvm}"
    );
}

#[test]
fn build_script_gives_a_working_dnsteer() {
    let out = TempDir::new("build-script").unwrap();
    let status = Command::new(root().join("deploy/build.sh"))
        .arg(out.path())
        .arg("dev")
        .status()
        .expect("running deploy/build.sh");
    assert!(status.success(), "deploy/build.sh failed: {status}");
    let built = out.path().join("dnsteer");
    let version = Command::new(&built).arg("--version").output().unwrap();
    assert!(version.status.success());
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("dnsteer {}", env!("CARGO_PKG_VERSION"))
    );
    // The kernel side is in it: `run --help` comes from the same binary that embeds it.
    let help = Command::new(&built)
        .args(["run", "--help"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("DNSTEER_IFACE"));
}

// Which rustup toolchain builds the kernel side: the one
// xdp-ebpf/rust-toolchain.toml pins. Included by xdp-loader/build.rs and
// xtask, so both pick the same one.

/// The `channel` of `xdp-ebpf/rust-toolchain.toml` in `ebpf_dir`.
fn pinned_nightly(ebpf_dir: &std::path::Path) -> Result<String, String> {
    let path = ebpf_dir.join("rust-toolchain.toml");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("channel"))
        .filter_map(|l| l.trim_start().strip_prefix('='))
        .map(|v| v.trim().trim_matches('"').to_owned())
        .find(|v| v.starts_with("nightly-"))
        .ok_or_else(|| format!("{}: no channel = \"nightly-YYYY-MM-DD\"", path.display()))
}

/// The name rustup knows the pinned nightly by on this machine: the pinned
/// name when installed under it; else `nightly` when that is the same build
/// (its channel manifest carries the pinned date); else the pinned name,
/// which `rustup toolchain install` fetches.
fn ebpf_toolchain(ebpf_dir: &std::path::Path) -> Result<String, String> {
    let pinned = pinned_nightly(ebpf_dir)?;
    let rustup = |args: &[&str]| {
        std::process::Command::new("rustup")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    };
    let installed = rustup(&["toolchain", "list"]).unwrap_or_default();
    if installed.lines().any(|l| l.starts_with(&format!("{pinned}-")) || l == pinned) {
        return Ok(pinned);
    }
    let date = pinned.trim_start_matches("nightly-");
    let same_build = rustup(&["run", "nightly", "rustc", "--print", "sysroot"])
        .and_then(|sysroot| {
            let manifest = std::path::Path::new(sysroot.trim())
                .join("lib/rustlib/multirust-channel-manifest.toml");
            std::fs::read_to_string(manifest).ok()
        })
        .is_some_and(|m| m.lines().any(|l| l == format!("date = \"{date}\"")));
    Ok(if same_build { "nightly".to_owned() } else { pinned })
}

//! Builds the kernel side (`xdp-ebpf`) for the bpf target with the nightly
//! toolchain `xdp-ebpf/rust-toolchain.toml` pins and bpf-linker, as aya's
//! template does; `cargo xtask` installs both.

use std::path::PathBuf;

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

include!("../xdp-ebpf/nightly.rs");

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?;
    let root = PathBuf::from(manifest_dir).join("../xdp-ebpf");
    let root_dir = root
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", root.display()))?;
    let ebpf = Package {
        name: "xdp-ebpf",
        root_dir,
        ..Default::default()
    };
    let toolchain = ebpf_toolchain(&root).map_err(|e| anyhow!(e))?;
    println!("cargo:rerun-if-changed={root_dir}/rust-toolchain.toml");
    aya_build::build_ebpf([ebpf], Toolchain::Custom(&toolchain))
        .context("building the eBPF program needs nightly's rust-src and bpf-linker: run `cargo xtask build` once to install them")
}

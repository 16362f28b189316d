#!/bin/sh
# Builds the dnsteer binary the image ships and installs it as OUT_DIR/dnsteer:
# the pinned toolchains (rust-toolchain.toml, xdp-ebpf/rust-toolchain.toml),
# bpf-linker installed --locked, then one build of the workspace with
# Cargo.lock as it is. The Dockerfile runs this; tests/tests/build_script.rs
# runs it on the test machine (in the dev profile, to reuse its build).
#
#   deploy/build.sh OUT_DIR [PROFILE]      PROFILE: release (default) or dev
set -eu
out=${1:?usage: deploy/build.sh OUT_DIR [release|dev]}
profile=${2:-release}
cd "$(dirname "$0")/.."
# cargo xtask installs what is missing and prints the binary's path.
bin=$(cargo xtask build --profile "$profile" | tail -n 1)
install -D -m 0755 "$bin" "$out/dnsteer"
"$out/dnsteer" --version

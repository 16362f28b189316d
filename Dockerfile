# The dnsteer image for deploy/kubernetes/daemonset.yaml:
#   docker build -t ghcr.io/dnsteer/dnsteer:0.1.0 .
#
# The kernel side needs nightly (rust-src, -Z build-std) and bpf-linker, which
# `cargo xtask build` installs against nightly's own LLVM (DEVELOPERS.md).
FROM rust:1.95-trixie AS build
RUN rustup toolchain install nightly --profile minimal --component rust-src
WORKDIR /src
COPY . .
RUN cargo xtask build \
 && cargo build --release --locked --package xdp-loader \
 && install -D target/release/dnsteer /out/dnsteer

# The loader links only glibc; iproute2 is for debugging on the node.
FROM debian:trixie-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates iproute2 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/dnsteer /usr/local/bin/dnsteer
ENTRYPOINT ["/usr/local/bin/dnsteer"]
CMD ["run", "--config", "/etc/dnsteer/dnsteer.toml", "--persist"]

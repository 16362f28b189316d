# The dnsteer image for deploy/kubernetes (README, "Deploying"):
#   docker build -t ghcr.io/dnsteer/dnsteer:0.1.0 .
#
# The build stage's Rust is the release rust-toolchain.toml pins; deploy/build.sh
# adds the pinned nightly (xdp-ebpf/rust-toolchain.toml) with rust-src and
# bpf-linker, and builds once with Cargo.lock as it is.
FROM rust:1.95.0-trixie AS build
WORKDIR /src
COPY . .
RUN deploy/build.sh /out release

# The loader links only glibc; iproute2 is for debugging on the node. It runs
# as an unprivileged user unless told otherwise: `dnsteer run` needs root with
# CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON (the DaemonSet asks for them), the
# other commands read what it pinned.
FROM debian:trixie-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates iproute2 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 65532 --no-create-home --shell /usr/sbin/nologin dnsteer
COPY --from=build /out/dnsteer /usr/local/bin/dnsteer
USER 65532
ENTRYPOINT ["/usr/local/bin/dnsteer"]
CMD ["run", "--config", "/etc/dnsteer/dnsteer.toml", "--persist"]

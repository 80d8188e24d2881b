# syntax=docker/dockerfile:1

# Build stage. Rust 1.95 is the toolchain the project is tested with, and bookworm has the
# same glibc (2.36) as the Debian 12 runtime image below, so the binary's symbol versions
# resolve there. The tag is rebuilt for Rust patch releases and Debian updates, so pin its
# digest as well (rust:1.95-slim-bookworm@sha256:<digest>) to build from a fixed image.
FROM rust:1.95-slim-bookworm AS build

WORKDIR /src

# Only what the release build reads. Cargo.toml declares the benchmarks as [[bench]]
# targets, and cargo rejects the manifest when their files are missing, so benches/ is
# copied too although the release build does not compile it. .dockerignore keeps target/
# and any local secret files out of the build context.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches

# The cache mounts keep downloaded crates and compiled dependencies between builds. The
# binary is copied out in the same step because the target cache is not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --locked --release \
    && install -D -m 0755 target/release/agent-access-proxy /out/agent-access-proxy

# Runtime stage: glibc, libgcc_s, the Debian CA bundle at /etc/ssl/certs/ca-certificates.crt
# (where the proxy finds the roots for TLS to the upstream) and the nonroot user 65532.
# It has no shell and no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot

LABEL org.opencontainers.image.title="agent-access-proxy" \
      org.opencontainers.image.description="Signing sidecar that lets AI agents call the Agent Access API without holding its secret" \
      org.opencontainers.image.licenses="Apache-2.0"

COPY --from=build /out/agent-access-proxy /agent-access-proxy

# A numeric user lets Kubernetes verify runAsNonRoot without reading /etc/passwd.
USER 65532:65532

# 8080: the agent-facing HTTP listener. The default configuration binds it to 127.0.0.1,
#       so only containers sharing the network namespace (a pod, or a Compose service with
#       network_mode: service:proxy) can reach it.
# 9090: the admin listener with /metrics, /healthz and /readyz for probes and Prometheus.
EXPOSE 8080 9090

# The configuration is mounted at run time (a ConfigMap, a Compose config or a bind mount).
# The image holds no configuration and no secret.
ENTRYPOINT ["/agent-access-proxy", "run", "--config", "/etc/agent-access-proxy/config.toml"]

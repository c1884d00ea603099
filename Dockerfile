# syntax=docker/dockerfile:1
#
# The dscc-token-operator image: the Rust binary (glibc, dynamically linked) on distroless
# (glibc, CA roots, no shell, no package manager), running as the non-root user 65532.
#
#   docker build -t dscc-token-operator:dev .
#
# Both base images are build arguments. Where no registry is reachable,
# testenv/image/build.sh builds local stand-ins for them and passes their names:
#
#   buildah bud --layers --build-arg BUILDER_IMAGE=localhost/... \
#     --build-arg RUNTIME_IMAGE=localhost/... -t localhost/dscc-token-operator:dev .
#
# What a builder must provide: cargo and rustc 1.95 or later on PATH, a C compiler (aws-lc),
# CARGO_HOME=/usr/local/cargo. What a runtime must provide: the glibc loader and the
# libraries the binary links (libc, libm, libgcc_s), /etc/ssl/certs/ca-certificates.crt,
# /etc/passwd with the user 65532.
#
# The Helm chart (charts/dscc-token-operator) runs it with `run` and its flags.

ARG BUILDER_IMAGE=docker.io/library/rust:1.95-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${BUILDER_IMAGE} AS build

# The sources: .dockerignore lets through only Cargo.toml, Cargo.lock, src/ and the
# workspace's other members (testkit/), which cargo must see to load the workspace.
# One COPY and no WORKDIR: with buildah's vfs storage every step is a full copy of the
# builder.
COPY . /src/

# The crates.io downloads and the target directory are cache mounts: they outlive the build,
# so a rebuild after a source change recompiles only this crate, and one after a Cargo.lock
# change only the crates that changed. (BuildKit and buildah both keep them; a registry or
# CI layer cache does not export them, a cold build there compiles everything.)
# touch: cargo decides freshness by mtime, and COPY keeps the context's mtimes, which may be
# older than the cached build (another checkout, git archive). This step only runs when the
# sources changed, so rebuilding the crate is never wasted.
RUN --mount=type=cache,id=dscc-token-operator-cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=dscc-token-operator-target,target=/src/target,sharing=locked \
    cd /src \
    && find . -path ./target -prune -o -exec touch {} + \
    && cargo build --release --locked --bin dscc-token-operator \
    && cp target/release/dscc-token-operator /dscc-token-operator \
    && /dscc-token-operator --version

FROM ${RUNTIME_IMAGE}

COPY --from=build /dscc-token-operator /dscc-token-operator

# After the COPY: a new revision changes only this metadata step.
ARG RUNTIME_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="dscc-token-operator" \
      org.opencontainers.image.description="Kubernetes operator that keeps HPE GreenLake / DSCC API tokens fresh in Secrets" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="https://github.com/dscc-token-operator/dscc-token-operator" \
      org.opencontainers.image.url="https://github.com/dscc-token-operator/dscc-token-operator" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${RUNTIME_IMAGE}"

USER 65532:65532
# metrics, health
EXPOSE 8080 8081
ENTRYPOINT ["/dscc-token-operator"]
CMD ["run"]

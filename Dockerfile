# syntax=docker/dockerfile:1
#
# The dscc-token-operator image: a static-ish Rust binary on distroless (glibc, CA roots, no
# shell, no package manager), running as the non-root user 65532.
#
#   docker build -t dscc-token-operator:dev .
#
# The Helm chart (charts/dscc-token-operator) runs it with `run` and its flags.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src

# Dependencies first, in their own layer: it is rebuilt only when Cargo.toml or Cargo.lock
# change, not on every source edit. The empty sources are replaced below.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked --bin dscc-token-operator \
    && rm -rf src

COPY src ./src
# touch: the placeholder build left newer timestamps than the copied sources.
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --bin dscc-token-operator \
    && cp target/release/dscc-token-operator /dscc-token-operator \
    && /dscc-token-operator --version

FROM gcr.io/distroless/cc-debian12:nonroot

ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="dscc-token-operator" \
      org.opencontainers.image.description="Kubernetes operator that keeps HPE GreenLake / DSCC API tokens fresh in Secrets" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="https://github.com/dscc-token-operator/dscc-token-operator" \
      org.opencontainers.image.url="https://github.com/dscc-token-operator/dscc-token-operator" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="gcr.io/distroless/cc-debian12:nonroot"

COPY --from=build /dscc-token-operator /dscc-token-operator

USER 65532:65532
# metrics, health
EXPOSE 8080 8081
ENTRYPOINT ["/dscc-token-operator"]
CMD ["run"]

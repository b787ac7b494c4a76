# Porter's container image: the two relay binaries built exactly as README.md builds them,
# on a slim Debian with a non-root user. Check it without a Docker engine:
# scripts/check-manifests (the Dockerfile part) compares it with README.md and the
# image's configuration (docs/deploy/config.yaml).
#
#   docker build -t porter:0.1.0 .
#   docker run --rm -p 7777:7777/udp -p 8080:8080 -e PORTER_API_TOKEN=change-me porter:0.1.0

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin porter --bin porter-smol

FROM debian:bookworm-slim
# ca-certificates: Redis over TLS checks the server against the system's roots.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 porter \
    && useradd --system --uid 10001 --gid porter --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin porter
COPY --from=build /src/target/release/porter /usr/local/bin/porter
COPY --from=build /src/target/release/porter-smol /usr/local/bin/porter-smol
COPY docs/deploy/config.yaml /etc/porter/config.yaml
USER 10001:10001
# QUIC clients (UDP) and the management API (TCP), as docs/deploy/config.yaml sets them.
EXPOSE 7777/udp 8080/tcp
ENTRYPOINT ["porter"]
CMD ["--config", "/etc/porter/config.yaml"]

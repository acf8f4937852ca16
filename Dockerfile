# meshd's image: `docker build -t ghcr.io/meshd/meshd:0.1.0 .`, then deploy/ uses it.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin meshd

FROM debian:bookworm-slim
# CA roots for DestinationRule TLS to external servers and JWKS fetches.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/meshd /usr/local/bin/meshd
# istiod's user, so that PodSecurity `restricted` admits it.
USER 1337:1337
ENTRYPOINT ["/usr/local/bin/meshd"]
CMD ["serve"]

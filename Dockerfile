# Strait: multi-stage build, small non-root runtime image.
#
#   docker build -t strait .
#   docker run --rm -p 8080:8080 -v $PWD/config/strait.toml:/etc/strait/strait.toml:ro strait
#
# The config is read from /etc/strait/strait.toml (mount yours there); listeners must bind 0.0.0.0
# inside the container to be reachable.

FROM rust:1-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake protobuf-compiler \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release -p strait --bin strait \
 && strip target/release/strait

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin strait \
 && mkdir -p /etc/strait
COPY --from=build /src/target/release/strait /usr/local/bin/strait
COPY config/strait.toml /etc/strait/strait.toml
USER strait
EXPOSE 8080
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/strait"]
CMD ["run", "--config", "/etc/strait/strait.toml"]

# Strait: multi-stage build, small non-root runtime image.
#
#   docker build -t strait .
#   docker run --rm -p 8080:8080 -v "$PWD/config:/etc/strait:ro" strait
#
# The admin API (9901) listens on the container's loopback only and is not published: it shows
# backend addresses and reloads the config. To scrape it from outside, give it a token_file and
# 0.0.0.0 in your config and publish it yourself (docs/operations.md, "Docker").
#
# The config is read from /etc/strait/strait.toml: mount a directory holding yours (and its
# certificates) over /etc/strait. Reload with `docker kill -s HUP <container>`; stop with
# `docker stop` (SIGTERM: drains in-flight calls for up to gateway.shutdown_grace, so give
# `docker stop -t` more than that). Listeners must bind 0.0.0.0 inside the container.

FROM rust:1-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake protobuf-compiler \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p strait --bin strait \
 && strip target/release/strait

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin strait \
 && mkdir -p /etc/strait
COPY --from=build /src/target/release/strait /usr/local/bin/strait
COPY config/docker.toml /etc/strait/strait.toml
COPY config/strait.schema.json /usr/share/strait/strait.schema.json
USER 10001:10001
EXPOSE 8080
STOPSIGNAL SIGTERM
# No curl in the image: the binary itself asks the admin listener's /healthz.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["/usr/local/bin/strait", "healthcheck", "--admin", "127.0.0.1:9901"]
ENTRYPOINT ["/usr/local/bin/strait"]
CMD ["run", "--config", "/etc/strait/strait.toml"]

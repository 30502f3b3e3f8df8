# wikigate container image. No Docker engine runs on the project's machines, so this file is
# not built in CI; it is kept simple on purpose.
#
#   docker build -t wikigate .
#   docker run -p 8080:8080 -p 9090:9090 -e WIKIGATE_UPSTREAM=https://SITE.atlassian.net wikigate
#
# The baked-in config (config/wikigate.toml) names no site: without WIKIGATE_UPSTREAM (or
# --upstream) the container refuses to start, naming upstream.url.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin wikigate

# Distroless: glibc and CA certificates, no shell, runs as uid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/wikigate /usr/local/bin/wikigate
COPY --from=build /src/config/wikigate.toml /etc/wikigate/wikigate.toml
USER 65532:65532
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/wikigate"]
CMD ["serve", "--config", "/etc/wikigate/wikigate.toml", "--listen", "0.0.0.0:8080", "--admin-listen", "0.0.0.0:9090"]

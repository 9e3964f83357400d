# syntax=docker/dockerfile:1
# Build: docker build -t feedline .
# Run:   docker run --rm -v $PWD/pipelines:/etc/feedline/pipelines:ro -p 9598:9598 feedline

FROM rust:1.88-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends pkg-config libssl-dev zlib1g-dev make \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p feedline \
 && strip target/release/feedline

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 zlib1g \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/feedline --create-home feedline
COPY --from=build /src/target/release/feedline /usr/local/bin/feedline
COPY pipelines /etc/feedline/pipelines
USER 10001:10001
WORKDIR /var/lib/feedline
ENV FEEDLINE_DATA_DIR=/var/lib/feedline
EXPOSE 9598
ENTRYPOINT ["feedline"]
CMD ["run", "/etc/feedline/pipelines", "--listen", "0.0.0.0:9598", "--log-format", "json"]

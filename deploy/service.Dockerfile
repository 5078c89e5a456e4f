# The sandpool service image, for people with an image registry:
#   docker-compose -f docker-compose.scale.yml build
# Machines without a registry build the same image from this machine's programs instead
# (scripts/scale, through scripts/host-image); both give /usr/local/bin/sandpool.
ARG BUILDER_IMAGE=rust:1-bookworm
ARG BASE_IMAGE=debian:bookworm-slim

FROM ${BUILDER_IMAGE} AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin sandpool

FROM ${BASE_IMAGE}
COPY --from=build /src/target/release/sandpool /usr/local/bin/sandpool
ENTRYPOINT ["/usr/local/bin/sandpool"]

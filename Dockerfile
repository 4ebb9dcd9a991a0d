# meshroom-svc on the official Meshroom image.
#
#   docker build -t meshroom-svc .
#   docker run --gpus all -p 8080:8080 meshroom-svc all-in-one --listen 0.0.0.0:8080   (needs MESHROOM_SVC_API_KEYS)
#
# Stage 1 builds a static (musl) binary: it runs on any Linux, whatever the glibc of the Meshroom image.
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends musl-tools && rm -rf /var/lib/apt/lists/* \
    && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY Cargo.toml Cargo.lock rustfmt.toml ./
COPY src src
COPY pipelines pipelines
COPY meshroom.toml meshroom.toml
RUN cargo build --release --locked --target x86_64-unknown-linux-musl \
    && cp target/x86_64-unknown-linux-musl/release/meshroom-svc /meshroom-svc

# Stage 2: the official Meshroom image (tag pinned: Meshroom and AliceVision versions must match).
# Its default command is sshd; the entrypoint is meshroom-svc instead.
FROM alicevision/meshroom:2025.1.0-av3.3.0-ubuntu22.04-cuda12.1.1
COPY --from=build /meshroom-svc /usr/local/bin/meshroom-svc
COPY pipelines /etc/meshroom-svc/pipelines
# The batch tool of the bundle, found without any further configuration.
ENV MESHROOM_BATCH=/opt/Meshroom_bundle/meshroom_batch \
    MESHROOM_SVC_ENGINE_PIPELINES_DIR=/etc/meshroom-svc/pipelines \
    MESHROOM_SVC_SERVER_DATA_DIR=/var/lib/meshroom-svc \
    QT_QPA_PLATFORM=offscreen \
    RUST_LOG=info
RUN mkdir -p /var/lib/meshroom-svc
WORKDIR /var/lib/meshroom-svc
VOLUME /var/lib/meshroom-svc
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/meshroom-svc"]
CMD ["all-in-one", "--listen", "0.0.0.0:8080"]

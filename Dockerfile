# natter images: one target per service, built two ways.
#
#   From source (real use: a workstation, CI with a registry, `okteto deploy`):
#     docker build --target edge      -t natter-edge .
#     docker build --target archiver  -t natter-archiver .
#     docker build --target filestore -t natter-filestore .
#
#   From prebuilt binaries (a machine that cannot pull base images; `just deploy-check`):
#     cargo build --release --bins
#     docker build --target edge-prebuilt --build-arg BASE=<local Debian image> -t natter-edge .
#   (`scripts/docker-images.sh` makes that local base with mmdebstrap and builds all three;
#   PROFILE=debug packs target/debug instead of target/release.)
#
# Both paths end in the same runtime: a root filesystem assembled from Debian bookworm's
# glibc, CA bundle and tini, plus the one service binary (the archiver image also carries
# natter-stream, the operator's tool for the CHAT stream: kubectl exec ... natter-stream
# show). No shell, no package manager, no coreutils: nothing the service does not run. It runs as uid/gid 10001 and writes nothing
# outside the volumes it is given, so `readOnlyRootFilesystem` holds. tini is PID 1: it
# passes SIGTERM to the service (which drains) and reaps anything that exits.
#
# The stages of the prebuilt path come first and tolerate missing binaries: the classic
# (non-BuildKit) builder runs every stage before its target, so a prebuilt build must never
# reach the Rust builder stage (nothing to pull where there is no registry), and a
# from-source build passes through the prebuilt stages without binaries. BuildKit skips
# the stages a target does not need.

ARG BASE=debian:bookworm-slim
ARG RUST_IMAGE=rust:1-bookworm

# ------------------------------------------------------------------ runtime root filesystem
FROM ${BASE} AS rootfs
# A base made by scripts/docker-base.sh already holds tini and ca-certificates (it cannot
# reach a package mirror at build time); debian:bookworm-slim gets them here.
RUN if [ ! -x /usr/bin/tini-static ] || [ ! -s /etc/ssl/certs/ca-certificates.crt ]; then \
        apt-get update \
        && apt-get install -y --no-install-recommends tini ca-certificates \
        && rm -rf /var/lib/apt/lists/*; \
    fi
# glibc and libgcc_s (all a Rust binary links against), the CA bundle, a statically linked
# tini, and just enough of /etc for a non-root user and name resolution.
RUN set -eu; \
    mkdir -p /rootfs/etc/ssl/certs /rootfs/usr/bin /rootfs/usr/local/bin /rootfs/tmp /rootfs/data; \
    for f in $(dpkg -L libc6 libgcc-s1 | grep -E '^/(usr/)?lib(64|/[^/]+-linux-gnu)?/[^/]+\.so(\.[0-9]+)*$'); do \
        cp -a --parents "$f" /rootfs/; \
    done; \
    cp /etc/ssl/certs/ca-certificates.crt /rootfs/etc/ssl/certs/; \
    cp /usr/bin/tini-static /rootfs/usr/bin/tini; \
    printf 'root:x:0:0:root:/root:/usr/sbin/nologin\nnatter:x:10001:10001:natter:/nonexistent:/usr/sbin/nologin\n' > /rootfs/etc/passwd; \
    printf 'root:x:0:\nnatter:x:10001:\n' > /rootfs/etc/group; \
    printf 'hosts: files dns\n' > /rootfs/etc/nsswitch.conf; \
    chmod 1777 /rootfs/tmp; \
    chown 10001:10001 /rootfs/data

FROM scratch AS runtime
COPY --from=rootfs /rootfs/ /
USER 10001:10001
WORKDIR /data
LABEL org.opencontainers.image.source="natter" \
      org.opencontainers.image.licenses="Apache-2.0"

# ------------------------------------------------------------------ prebuilt binaries
FROM rootfs AS prebuilt
ARG PROFILE=release
# The patterns match nothing where no binaries were built (Cargo.lock keeps the COPY
# valid); scripts/docker-images.sh refuses to build the prebuilt targets without them.
COPY Cargo.lock target/${PROFILE}/natter-edg[e] target/${PROFILE}/natter-archive[r] target/${PROFILE}/natter-filestor[e] target/${PROFILE}/natter-strea[m] \
     target/${PROFILE}/natter-bot[s] /prebuilt/
# Each binary must start inside the runtime's file system, as the runtime's user.
RUN for b in natter-edge natter-archiver natter-filestore natter-stream natter-bots; do \
        mkdir -p /out/$b; \
        [ -e /prebuilt/$b ] || continue; \
        cp /prebuilt/$b /rootfs/usr/local/bin/ \
        && chroot --userspec=10001:10001 /rootfs /usr/local/bin/$b --help >/dev/null \
        && cp /prebuilt/$b /out/$b/ || exit 1; \
    done

FROM runtime AS edge-prebuilt
COPY --from=prebuilt /out/natter-edge/ /usr/local/bin/
ENV NATTER_LISTEN=0.0.0.0:8080
EXPOSE 8080
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/natter-edge"]

FROM runtime AS archiver-prebuilt
COPY --from=prebuilt /out/natter-archiver/ /out/natter-stream/ /usr/local/bin/
ENV NATTER_LISTEN=0.0.0.0:8091
EXPOSE 8091
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/natter-archiver"]

FROM runtime AS filestore-prebuilt
COPY --from=prebuilt /out/natter-filestore/ /usr/local/bin/
ENV NATTER_LISTEN=0.0.0.0:8090 NATTER_FILESTORE_DIR=/data
EXPOSE 8090
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/natter-filestore"]

FROM runtime AS bots-prebuilt
COPY --from=prebuilt /out/natter-bots/ /usr/local/bin/
ENV NATTER_LISTEN=0.0.0.0:8092 NATTER_OPS_LISTEN=0.0.0.0:9092
EXPOSE 8092 9092
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/natter-bots"]

# ------------------------------------------------------------------ from source
FROM ${RUST_IMAGE} AS builder
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bins -p natter-edge -p natter-archiver -p natter-filestore -p natter-bus \
    && mkdir -p /out \
    && cp target/release/natter-edge target/release/natter-archiver target/release/natter-filestore \
          target/release/natter-stream /out/

FROM rootfs AS built
COPY --from=builder /out/ /rootfs/usr/local/bin/
RUN for b in natter-edge natter-archiver natter-filestore natter-stream; do \
        chroot --userspec=10001:10001 /rootfs /usr/local/bin/$b --help >/dev/null || exit 1; \
    done

FROM runtime AS edge
COPY --from=built /rootfs/usr/local/bin/natter-edge /usr/local/bin/natter-edge
ENV NATTER_LISTEN=0.0.0.0:8080
EXPOSE 8080
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/natter-edge"]

FROM runtime AS archiver
COPY --from=built /rootfs/usr/local/bin/natter-archiver /rootfs/usr/local/bin/natter-stream /usr/local/bin/
ENV NATTER_LISTEN=0.0.0.0:8091
EXPOSE 8091
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/natter-archiver"]

FROM runtime AS filestore
COPY --from=built /rootfs/usr/local/bin/natter-filestore /usr/local/bin/natter-filestore
ENV NATTER_LISTEN=0.0.0.0:8090 NATTER_FILESTORE_DIR=/data
EXPOSE 8090
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/natter-filestore"]

# ------------------------------------------------------------------ bots (from source)
# natter-bots builds in its own stage, so the targets above stay as they are.
FROM ${RUST_IMAGE} AS bots-builder
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bins -p natter-bots \
    && mkdir -p /out \
    && cp target/release/natter-bots /out/

FROM rootfs AS bots-built
COPY --from=bots-builder /out/natter-bots /rootfs/usr/local/bin/natter-bots
RUN chroot --userspec=10001:10001 /rootfs /usr/local/bin/natter-bots --help >/dev/null

FROM runtime AS bots
COPY --from=bots-built /rootfs/usr/local/bin/natter-bots /usr/local/bin/natter-bots
ENV NATTER_LISTEN=0.0.0.0:8092 NATTER_OPS_LISTEN=0.0.0.0:9092
EXPOSE 8092 9092
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/natter-bots"]

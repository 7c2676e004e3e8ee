# sidkeyd in a container. Build:   make wheels && docker build -t sidkeyd .
# Where no registry is reachable, build FROM a local Debian base (make image-test does):
#   debootstrap --variant=minbase bookworm rootfs && tar -C rootfs -c . | docker import - bookworm
#   make wheels && docker build --build-arg BASE_IMAGE=bookworm -t sidkeyd .
# The daemon runs as uid 10001, gid 10010; the socket (in the /run/sidkeyd volume) has group
# 10010, so a client container joins it with `--group-add 10010` (Kubernetes:
# supplementalGroups). Both numbers are fixed: README "Containers and Kubernetes".
ARG BASE_IMAGE=debian:bookworm-slim

# Build stage: a venv with sidkeyd and its pinned dependencies, installed offline from the
# wheels `make wheels` puts in build/wheels (the host's pip, with its index and proxy settings,
# fetches them; the build needs no access to PyPI).
FROM ${BASE_IMAGE} AS build
LABEL org.opencontainers.image.title=sidkeyd
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
COPY constraints.txt /tmp/constraints.txt
COPY build/wheels /tmp/wheels
RUN python3 -m venv /opt/sidkeyd \
    && /opt/sidkeyd/bin/pip install --no-index --find-links /tmp/wheels --no-cache-dir \
        --disable-pip-version-check -c /tmp/constraints.txt "sidkeyd[aws,vault]" \
    && /opt/sidkeyd/bin/pip uninstall --yes --disable-pip-version-check pip setuptools

# Runtime stage: Debian's python3 and the venv, nothing to build with.
FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title=sidkeyd
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10010 sidkeyd-clients \
    && useradd --uid 10001 --gid sidkeyd-clients --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin sidkeyd \
    && install -d -o sidkeyd -g sidkeyd-clients -m 0750 /run/sidkeyd \
    && install -d -m 0755 /etc/sidkeyd
COPY --from=build /opt/sidkeyd /opt/sidkeyd
COPY config/sidkeyd.container.toml /etc/sidkeyd/sidkeyd.toml

# Nothing is written to the root filesystem: no bytecode, the socket in the volume.
ENV PATH=/opt/sidkeyd/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SIDKEYD_CONFIG=/etc/sidkeyd/sidkeyd.toml \
    SIDKEYD_SOCKET=/run/sidkeyd/sidkeyd.sock
# The socket group is the daemon's primary group: it may give it to the socket on any runtime
# (supplementary groups from /etc/group are not applied everywhere). Give key files to the
# uid, not to this group.
USER 10001:10010
VOLUME ["/run/sidkeyd"]
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 CMD ["sidkeyd", "health"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["sidkeyd"]
CMD ["serve"]

# Sidecar Injector webhook image: `make image` (docker, podman or buildah), or
#   docker build --build-arg VERSION=0.1.0 -t ghcr.io/company/sidecar-injector:0.1.0 .
# BASE is any Debian-based image with python3 (>= 3.11) and its venv module: the official slim
# Python image by default; CI builds with a local Debian base made by tools/image/base.sh, since
# no registry is reachable there. The app lives in a virtualenv built in the first stage and copied
# whole; the runtime runs as a numeric non-root user and needs nothing writable but /tmp (the chart
# mounts an emptyDir there). No HEALTHCHECK: Kubernetes probes /healthz and /readyz over HTTPS.
ARG BASE=python:3.11.14-slim-bookworm

FROM ${BASE} AS build
# the version pyproject.toml holds (make image passes it); the build fails if they differ
ARG VERSION=0.1.0
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY webhook ./webhook
COPY policies ./policies
RUN python3 -m venv /opt/sidecar-injector \
 && /opt/sidecar-injector/bin/pip install --no-cache-dir -c constraints.txt . \
 && /opt/sidecar-injector/bin/pip uninstall --yes pip \
 && test "$(/opt/sidecar-injector/bin/sidecar-injector --version)" = "sidecar-injector, version ${VERSION}" \
 && mkdir -p /out/policies \
 && cp policies/*.yaml /out/policies/

FROM ${BASE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="sidecar-injector" \
      org.opencontainers.image.description="Kubernetes mutating admission webhook that injects sidecars, init containers and volumes from policy files" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/company/sidecar-injector"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/sidecar-injector/bin:$PATH \
    SIDECAR_INJECTOR_POLICIES=/etc/sidecar-injector/policies
COPY --from=build /opt/sidecar-injector /opt/sidecar-injector
COPY --from=build /out/policies /etc/sidecar-injector/policies
USER 65532:65532
EXPOSE 8443
ENTRYPOINT ["/opt/sidecar-injector/bin/sidecar-injector"]
CMD ["serve"]

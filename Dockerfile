# Sidecar Injector webhook image: `docker build -t ghcr.io/company/sidecar-injector:0.1.0 .`
# Multi-stage: wheels are built with the pinned constraints, then installed into a slim runtime
# that runs as a numeric non-root user and needs nothing writable but /tmp (the chart mounts an
# emptyDir there). No HEALTHCHECK: Kubernetes probes /healthz and /readyz over HTTPS.

FROM python:3.11.14-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY webhook ./webhook
COPY policies ./policies
RUN pip wheel --no-cache-dir --wheel-dir /wheels -c constraints.txt . \
 && mkdir -p /out/policies \
 && cp policies/*.yaml /out/policies/

FROM python:3.11.14-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SIDECAR_INJECTOR_POLICIES=/etc/sidecar-injector/policies
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels sidecar-injector==0.1.0 \
 && rm -rf /wheels
COPY --from=build /out/policies /etc/sidecar-injector/policies
USER 65532:65532
EXPOSE 8443
ENTRYPOINT ["sidecar-injector"]
CMD ["serve"]

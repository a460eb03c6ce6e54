# rc-mta in a container. Build: docker build -t rc-mta .
# Run:   docker run -d --name rc-mta -p 25:25 -p 8025:8025 \
#          -v /srv/rc-mta/rc-mta.toml:/etc/rc-mta/rc-mta.toml:ro -v rc-mta-state:/var/lib/rc-mta rc-mta
# Any key can be set as RC_MTA_<SECTION>__<KEY>, e.g. -e RC_MTA_STORE__URL=postgresql://...
# (the environment wins over the file). See docs/operations.md.
FROM python:3.11-slim

LABEL org.opencontainers.image.title="rc-mta" \
      org.opencontainers.image.description="Complete or fail workflow tasks by answering an email" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY rc_mta ./rc_mta
COPY conf/rc-mta.toml ./conf/rc-mta.toml

# The package, a system user, and a default config (the documented one, listening on every
# address: SMTP on 25, HTTP on 8025) that a mounted /etc/rc-mta/rc-mta.toml replaces.
# Docker lets unprivileged processes bind ports below 1024 inside the container
# (net.ipv4.ip_unprivileged_port_start=0), so port 25 needs no root.
RUN pip install --no-cache-dir . \
    && useradd --system --uid 10025 --user-group --home-dir /var/lib/rc-mta --shell /usr/sbin/nologin rc-mta \
    && install -d -m 0750 -o rc-mta -g rc-mta /var/lib/rc-mta \
    && install -d -m 0755 /etc/rc-mta \
    && sed -e 's/^listen = "127.0.0.1:2525"/listen = "0.0.0.0:25"/' \
           -e 's/^listen = "127.0.0.1:8025"/listen = "0.0.0.0:8025"/' \
           conf/rc-mta.toml > /etc/rc-mta/rc-mta.toml \
    && chmod 0644 /etc/rc-mta/rc-mta.toml \
    && rm -rf /src

# Relative paths in the config (var/: SQLite store, outbox, generated signing key, pid file)
# land in the state volume.
WORKDIR /var/lib/rc-mta
VOLUME ["/var/lib/rc-mta"]
# Numeric, so Kubernetes runAsNonRoot can verify it: the rc-mta user made above.
USER 10025:10025

ENV RC_MTA_CONFIG=/etc/rc-mta/rc-mta.toml \
    HEALTHCHECK_URL=http://127.0.0.1:8025/healthz

# SMTP, LMTP (when [inbound] lmtp_listen is set, e.g. "0.0.0.0:24"), HTTP (/metrics, /healthz, /readyz, API).
EXPOSE 25 24 8025

# Liveness only (a blocked loop or a stale poller); no curl in slim, so Python asks.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['HEALTHCHECK_URL'], timeout=4)"]

STOPSIGNAL SIGTERM
ENTRYPOINT ["rc-mta"]
CMD ["serve"]

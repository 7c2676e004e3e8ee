# sidkeyd in a container: share /run/sidkeyd as a volume with the client containers.
FROM python:3.11-slim

RUN useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin sidkeyd \
    && mkdir -p /run/sidkeyd /etc/sidkeyd \
    && chown sidkeyd:sidkeyd /run/sidkeyd

WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-cache-dir ".[aws,vault]" && rm -rf /src

USER sidkeyd
VOLUME ["/run/sidkeyd"]
ENV SIDKEYD_CONFIG=/etc/sidkeyd/sidkeyd.toml SIDKEYD_SOCKET=/run/sidkeyd/sidkeyd.sock
HEALTHCHECK --interval=30s --timeout=5s CMD ["sidkeyd", "health"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["sidkeyd"]
CMD ["serve"]

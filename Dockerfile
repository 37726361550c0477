# Matrix ⇄ SIP bridge. Build: docker build -t matrix-sip-bridge .
# Run:   docker run -v /srv/sip-bridge:/data -p 29360:29360 -p 5060:5060/udp \
#          -p 5060:5060/tcp -p 20000-20999:20000-20999/udp matrix-sip-bridge
# The first start without /data/config.yaml copies the example config there and stops.

FROM python:3.11-slim-bookworm AS build
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY bridge ./bridge
RUN pip install --no-cache-dir .

FROM python:3.11-slim-bookworm
RUN useradd --system --uid 1337 --home-dir /data --shell /usr/sbin/nologin bridge \
    && mkdir -p /data && chown bridge /data
COPY --from=build /opt/venv /opt/venv
COPY config.example.yaml /opt/bridge/config.example.yaml
COPY docker/start.sh /opt/bridge/start.sh
ENV PATH=/opt/venv/bin:$PATH
USER bridge
WORKDIR /data
VOLUME /data
EXPOSE 29360 5060/udp 5060/tcp
ENTRYPOINT ["/opt/bridge/start.sh"]

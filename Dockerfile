# One image for every role: `rendezvous` (the default command), `worker` and `relay`.
#   docker build -t holepunch-services .
#   docker run -p 8080:8080 holepunch-services                       # the rendezvous on $PORT
#   docker run holepunch-services worker                             # a worker ($PORT: /status, /metrics)
#   docker run -p 4001:4001 -p 4001:4001/udp -p 4002:4002 holepunch-services relay
# No secret is baked in: REDIS_URL, COOKIE_HMAC_KEY and identity keys come from the environment at run time.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
# checkov:skip=CKV_DOCKER_7: the base is pinned by the ARG above (python:3.11-slim-bookworm); checkov cannot read through the ARG

FROM ${PYTHON_IMAGE} AS build
ARG PIP_NO_INDEX=0
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
# Wheels fetched beforehand may be put in wheels/; with --build-arg PIP_NO_INDEX=1 the build uses only
# those (offline builds, scripts/container-check.sh); otherwise pip also uses the index.
# fastecdsa (a py-libp2p dependency) ships no wheel and is compiled here; offline builds bring it prebuilt.
# hadolint ignore=DL3008
RUN if [ "$PIP_NO_INDEX" != "1" ]; then \
      apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev libgmp-dev \
      && rm -rf /var/lib/apt/lists/*; \
    fi
COPY constraints.txt pyproject.toml README.md /src/
COPY wheels/ /wheels/
COPY shared /src/shared
COPY rendezvous /src/rendezvous
COPY worker /src/worker
COPY relay /src/relay
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --find-links /wheels -c /src/constraints.txt /src

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PORT=8080 HOME=/home/app WEB_DIR=/opt/web
COPY --from=build /opt/venv /opt/venv
# The browser demo: web/dist is built beforehand by scripts/build-web.sh (esbuild; Cloud Build's web step).
COPY web/index.html /opt/web/index.html
COPY web/dist/app.js /opt/web/dist/app.js
# A numeric, unprivileged user; identity files default to its home directory.
RUN useradd --uid 10001 --create-home --home-dir /home/app --shell /usr/sbin/nologin app
USER 10001
EXPOSE 8080 4001 4001/udp 4002
HEALTHCHECK --interval=30s --timeout=3s CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ['PORT']}/healthz\", timeout=2)"]
CMD ["rendezvous"]

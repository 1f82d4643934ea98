# syntax=docker/dockerfile:1
# The service image: the serving install only (no pandas, pyarrow, scipy, scikit-learn, matplotlib),
# pinned by constraints.txt, run as a non-root user. `--build-arg EXTRAS=lab` builds the training
# image instead (compose.yaml's `train` service). Build: docker build -t riskengine .
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ARG EXTRAS=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/riskengine
WORKDIR /src
COPY constraints.txt ./
COPY pyproject.toml README.md LICENSE ./
COPY riskengine ./riskengine
RUN /opt/riskengine/bin/pip install -c constraints.txt ".${EXTRAS:+[$EXTRAS]}" \
 && /opt/riskengine/bin/pip uninstall -y pip \
 && find /opt/riskengine -name __pycache__ -prune -exec rm -rf {} +

FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 riskengine \
 && useradd --system --uid 10001 --gid riskengine --home-dir /srv/riskengine --no-create-home riskengine \
 && mkdir -p /srv/riskengine/var /srv/riskengine/models \
 && chown -R riskengine:riskengine /srv/riskengine
COPY --from=build /opt/riskengine /opt/riskengine
ENV PATH=/opt/riskengine/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    RISKENGINE_HOME=/srv/riskengine
WORKDIR /srv/riskengine
# var/ holds the keys (and SQLite files without Redis), models/ the registry: mount volumes there
VOLUME ["/srv/riskengine/var", "/srv/riskengine/models"]
USER riskengine
EXPOSE 8000
# liveness: the process answers; readiness (/readyz) is the orchestrator's probe (compose.yaml, README)
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/livez', timeout=2).status != 200)"]
CMD ["riskengine", "serve", "--host", "0.0.0.0", "--port", "8000"]

# syntax=docker/dockerfile:1
# The BAP inference server for an edge box: ONNX Runtime without torch, the bundled model (with its
# compiled graphs) inside, non-root.
#   docker build -t bap-server .      (docker-compose.yml builds and runs it with Prometheus and Grafana)
# Settings are BAP_* environment variables (server/config.py); the model store is a volume at /store.

# Both stages must share one interpreter: the venv built in the first is copied into the second.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: install the project into /opt/venv with the same script as the README and CI ----
FROM ${PYTHON_IMAGE} AS build
# binutils: slim_venv.sh strips the venv's shared libraries with it (-22 MB); an offline build
# that reaches no Debian mirror passes --build-arg BAP_BUILD_PACKAGES= and keeps the symbols.
ARG BAP_BUILD_PACKAGES=binutils
# --build-arg BAP_EXTRAS=openvino adds the opt-in OpenVINO runtime (BAP_RUNTIME=openvino, and
# BAP_PRECISION=bf16 on a CPU with avx512_bf16 or AMX); the default image has ONNX Runtime only.
ARG BAP_EXTRAS=""
ENV PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    BAP_VENV=/opt/venv \
    BAP_EXTRAS=${BAP_EXTRAS} \
    BAP_SYSTEM_PACKAGES=${BAP_BUILD_PACKAGES}
# pip's own variables as build args, for a local wheel folder or a private index, e.g.
#   --build-arg PIP_NO_INDEX=1 --build-arg PIP_FIND_LINKS=/app/wheels  (wheels/ in the context)
ARG PIP_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_NO_INDEX
WORKDIR /app
# Only what the server needs: no training, tests or benchmarks. setup.sh installs the project in
# editable mode, so /app must sit at the same path in the final stage.
COPY pyproject.toml README.md ./
COPY scripts/setup.sh scripts/slim_venv.sh scripts/entrypoint.sh scripts/
COPY model_store model_store
COPY server server
# a local wheel folder, if the build uses one (the glob matches nothing otherwise)
COPY pyproject.toml wheel[s] /app/wheels/
# pip and setuptools are not needed to run (the editable install's finder stands alone): -26 MB;
# slim_venv.sh drops what the server never loads (-90 MB) and proves it still serves.
RUN scripts/setup.sh \
 && /opt/venv/bin/python -c "import importlib.util as u, server, sys; sys.exit(u.find_spec('torch') and 'torch must not be in the server image')" \
 && /opt/venv/bin/python -m pip uninstall -y -q pip setuptools \
 && /opt/venv/bin/python -c "import server.app" \
 && scripts/slim_venv.sh /opt/venv \
 && rm -rf /app/wheels

# ---- final: the interpreter, the venv, the code and the model; no compilers, no pip cache ----
FROM ${PYTHON_IMAGE}
# /store is an empty folder owned by bap: a named volume mounted there takes its owner, and the
# entrypoint seeds it from the one copy of the bundled model under /app (first start: all of it;
# a newer image: its new versions, CURRENT unmoved), so the
# image holds the model once.
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin bap \
 && mkdir /store && chown bap:bap /store
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
WORKDIR /app
# ORT_DISABLE_TELEMETRY: ONNX Runtime 1.29+ sends usage telemetry from Linux builds too (and
# warns that a user without a home cannot persist its device ID); an edge box sends nothing.
ENV PATH=/opt/venv/bin:$PATH \
    ORT_DISABLE_TELEMETRY=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    BAP_HOST=0.0.0.0 \
    BAP_PORT=8000 \
    BAP_STORE=/store \
    BAP_MODEL=embedded
USER bap
EXPOSE 8000
# Ready = model loaded, verified and warm (503 before). slim has no curl: urllib fails on non-2xx.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('BAP_PORT', '8000') + '/readyz', timeout=4)"]
# The entrypoint execs the server: SIGTERM reaches it, and it drains in-flight requests first.
ENTRYPOINT ["/app/scripts/entrypoint.sh"]

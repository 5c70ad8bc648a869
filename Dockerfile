# RealNVP model service image: build wheels in one stage, install them into a slim runtime with no build tools.
#
#   CPU (default):  DOCKER_BUILDKIT=1 docker build -t realnvp-service:cpu .
#   CUDA:           DOCKER_BUILDKIT=1 docker build -t realnvp-service:cuda \
#                     --build-arg BASE_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04 \
#                     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
#   Behind a TLS-intercepting proxy: add `--secret id=ca,src=/etc/ssl/certs/ca-certificates.crt` (used by pip
#   during the build only, never stored in a layer).
#
# Dependencies come from pyproject.toml + constraints.txt, exactly as `make install` reads them (no requirements
# file of its own). No `# syntax=` line on purpose: the built-in Dockerfile frontend of Docker >= 20.10 has every
# feature used here (RUN --mount), and naming a frontend image would need a registry pull.
# See docs/deploy.md.

ARG BASE_IMAGE=python:3.11-slim-bookworm

# --- base: a Python 3.10+ with venv, shared by both stages (the venv's interpreter path must match) ----------
FROM ${BASE_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# The official Python image and the debootstrap base (docker/build-base.sh) already have Python; a CUDA runtime
# base (Ubuntu) gets its distribution's python3 + venv.
RUN if ! python3 -c "import ensurepip, venv" 2>/dev/null; then \
        apt-get update \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && python3 -c "import sys; assert sys.version_info >= (3, 10), sys.version"

# --- build: every wheel the runtime needs, in /wheels/deps (third-party) and /wheels/project (this repo) -----
FROM base AS build
# Optional extras of pyproject.toml, comma-separated: "" for the API image, "data" for the training image.
ARG EXTRAS=""
# Extra index for torch; the CPU one keeps the image small. Empty: PyPI (+ docker/wheels/) only.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# Pass-through for mirrors; proxies use Docker's predefined HTTP(S)_PROXY / NO_PROXY build args.
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_INPUT=1
RUN python3 -m venv /opt/build
WORKDIR /src
# Dependencies first, from pyproject.toml + constraints.txt alone, so that a change of the sources or the README
# does not re-resolve them: pip builds the project from a tree with no package sources (and a placeholder
# README), which declares the same dependencies; that empty wheel of the project is thrown away.
COPY pyproject.toml constraints.txt ./
RUN --mount=type=secret,id=ca \
    --mount=type=bind,source=docker/wheels,target=/wheels-local \
    --mount=type=cache,target=/root/.cache/pip \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
    && touch README.md \
    && /opt/build/bin/pip wheel --wheel-dir /wheels/deps --find-links /wheels-local \
        ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} \
        --constraint constraints.txt ".${EXTRAS:+[$EXTRAS]}" \
    && rm /wheels/deps/realnvp_service-*.whl
COPY README.md ./
COPY artifact ./artifact
COPY models ./models
COPY training ./training
COPY service ./service
RUN --mount=type=secret,id=ca \
    --mount=type=cache,target=/root/.cache/pip \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
    && /opt/build/bin/pip wheel --no-deps --wheel-dir /wheels/project .

# --- runtime: a venv with the wheels, the bundled models, a non-root user ------------------------------------
FROM base AS runtime
LABEL org.opencontainers.image.title="realnvp-service" \
      org.opencontainers.image.description="RealNVP normalizing flows over HTTP (sampling, log-likelihood)"
RUN groupadd --system --gid 10001 realnvp \
    && useradd --system --uid 10001 --gid realnvp --home-dir /app --create-home --shell /usr/sbin/nologin realnvp \
    && install -d -o realnvp -g realnvp /app/runs
# pip runs from the build stage's venv (`--python` targets the runtime venv), so no pip stays in the image.
# Two layers: the dependencies (cached until pyproject.toml / constraints.txt change), then the project.
RUN --mount=type=bind,from=build,source=/opt/build,target=/opt/build \
    --mount=type=bind,from=build,source=/wheels/deps,target=/wheels/deps \
    python3 -m venv --without-pip /opt/venv \
    && /opt/build/bin/pip --python /opt/venv/bin/python install --no-index --no-cache-dir /wheels/deps/*.whl \
    && site=$(/opt/venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])") \
    && echo "torch's C++ headers and test binaries (unused at run time): $(du -sh "$site/torch/include" \
        "$site/torch/test" "$site/torch/bin" 2>/dev/null | tr '\n\t' '  ')" \
    && rm -rf "$site/torch/include" "$site/torch/test" \
    && if [ -d "$site/torch/bin" ]; then find "$site/torch/bin" -type f ! -name torch_shm_manager -delete; fi
RUN --mount=type=bind,from=build,source=/opt/build,target=/opt/build \
    --mount=type=bind,from=build,source=/wheels,target=/wheels \
    /opt/build/bin/pip --python /opt/venv/bin/python install --no-index --no-cache-dir --no-deps \
        /wheels/project/*.whl \
    && /opt/build/bin/pip --python /opt/venv/bin/python check
COPY docker/healthcheck.py docker/train_job.py /usr/local/lib/realnvp/
# The bundled models. MODEL_DIR is a plain folder: mount a volume (or a host folder) on /models to replace them;
# an empty named volume mounted there starts as a copy of them (Docker copies image content into new volumes).
COPY --chown=realnvp:realnvp model_store/ /models/
ENV PATH=/opt/venv/bin:$PATH \
    MODEL_DIR=/models \
    HOST=0.0.0.0 \
    PORT=8000
USER realnvp
WORKDIR /app
EXPOSE 8000
# /readyz is 200 once every model is loaded and warmed up; the start period covers loading.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 CMD ["python3", "/usr/local/lib/realnvp/healthcheck.py"]
CMD ["realnvp-serve"]

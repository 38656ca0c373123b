#!/usr/bin/env bash
# Builds the upstream Kubernetes 1.20 binaries (kube-apiserver,
# kube-controller-manager, kube-scheduler, kubelet) from Debian's `kubernetes`
# source package, once, into a cache dir outside the work tree, and prints the
# directory holding them (the last line of stdout; everything else goes to
# stderr). The tests find them through UPSTREAM_K8S_BIN_DIR, which
# scripts/test.sh sets to that directory.
#
#   bash scripts/upstream-k8s.sh              # build if needed, print the bin dir
#   UPSTREAM_K8S_CACHE=/some/dir bash scripts/upstream-k8s.sh
#
# Idempotent: when the cached binaries exist and report the expected version it
# touches nothing (no apt, no build). Otherwise, as root, it
#   - adds a `deb-src` source for bookworm (Debian ships the 1.20.2 source with
#     its vendor/ tree) and a `deb` source for bullseye pinned so that only
#     golang-1.15 comes from it (Go 1.19 refuses that vendor tree);
#   - installs golang-1.15-go, rsync, dpkg-dev (dpkg-source) and etcd-server
#     (the etcd the upstream control plane runs on);
#   - `apt-get source kubernetes` into the cache, and builds the four binaries
#     with `make WHAT=...` (a few minutes on 2 cores).
# Only Debian's package registries are used: CI has no other network.
set -euo pipefail
# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

K8S_VERSION=1.20.2
CACHE_DIR=${UPSTREAM_K8S_CACHE:-/var/cache/kubelet-rs/upstream-k8s-$K8S_VERSION}
BIN_DIR="$CACHE_DIR/bin"
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubelet)
GO_ROOT=/usr/lib/go-1.15

SOURCES_FILE=/etc/apt/sources.list.d/kubelet-rs-upstream-k8s.sources
PREFERENCES_FILE=/etc/apt/preferences.d/kubelet-rs-upstream-k8s
PACKAGES=(golang-1.15-go rsync dpkg-dev etcd-server)

log() { printf 'upstream-k8s: %s\n' "$*" >&2; }

# True when every binary is in the cache and says it is $K8S_VERSION.
cached() {
    local bin out
    for bin in "${BINARIES[@]}"; do
        [[ -x "$BIN_DIR/$bin" ]] || return 1
        out=$("$BIN_DIR/$bin" --version 2>/dev/null) || return 1
        [[ "$out" == "Kubernetes v$K8S_VERSION" ]] || return 1
    done
}

# etcd is not part of the cache but of the test setup; make sure it is there
# even when the binaries are cached (a fresh machine with a restored cache).
packages_missing() {
    local pkg status
    for pkg in "${PACKAGES[@]}"; do
        status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
        [[ "$status" == installed ]] || return 0
    done
    return 1
}

add_apt_sources() {
    local changed=0
    if [[ ! -f "$SOURCES_FILE" ]]; then
        log "adding $SOURCES_FILE (deb-src bookworm, deb bullseye)"
        cat >"$SOURCES_FILE" <<'EOF'
# Added by kubelet-rs scripts/upstream-k8s.sh: the source of Debian's
# kubernetes 1.20.2 package, and Go 1.15 (bullseye) to build it with.
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian
Suites: bullseye
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
        changed=1
    fi
    if [[ ! -f "$PREFERENCES_FILE" ]]; then
        log "adding $PREFERENCES_FILE (only golang-1.15 from bullseye)"
        cat >"$PREFERENCES_FILE" <<'EOF'
# Added by kubelet-rs scripts/upstream-k8s.sh: bullseye is there for Go 1.15
# only; nothing else may be installed or upgraded from it.
Package: *
Pin: release n=bullseye
Pin-Priority: -1

Package: golang-1.15 golang-1.15-go golang-1.15-src
Pin: release n=bullseye
Pin-Priority: 500
EOF
        changed=1
    fi
    return $((1 - changed))
}

install_packages() {
    export DEBIAN_FRONTEND=noninteractive
    if add_apt_sources || packages_missing || ! apt-cache showsrc kubernetes >/dev/null 2>&1; then
        apt-get update -q >&2
    fi
    if packages_missing; then
        log "installing ${PACKAGES[*]}"
        apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" >&2
    fi
}

build() {
    local src_root="$CACHE_DIR/src" src start end
    # A half-made source tree from an interrupted run is thrown away.
    rm -rf "$src_root"
    mkdir -p "$src_root"
    log "fetching the source (apt-get source kubernetes=$K8S_VERSION*) into $src_root"
    (cd "$src_root" && apt-get source -q --only-source "kubernetes" >&2)
    src=$(find "$src_root" -mindepth 1 -maxdepth 1 -type d -name 'kubernetes-*' | head -n1)
    [[ -n "$src" && -d "$src/vendor" ]] || die "no kubernetes source tree with vendor/ under $src_root"
    grep -q "^kubernetes (.*$K8S_VERSION" "$src/debian/changelog" ||
        die "apt-get source gave $(head -n1 "$src/debian/changelog"), expected $K8S_VERSION"

    log "building ${BINARIES[*]} with $("$GO_ROOT/bin/go" version) (takes a few minutes)"
    start=$(date +%s)
    # No .git in the source package: hack/lib/version.sh takes the version
    # from these instead, so `--version` says v$K8S_VERSION.
    (
        cd "$src"
        export PATH="$GO_ROOT/bin:$PATH" GOROOT="$GO_ROOT" GOFLAGS=-mod=vendor GO111MODULE=on
        export GOPATH="$CACHE_DIR/gopath" GOCACHE="$CACHE_DIR/gocache"
        export KUBE_GIT_VERSION="v$K8S_VERSION" KUBE_GIT_TREE_STATE=clean
        export KUBE_GIT_MAJOR=1 KUBE_GIT_MINOR=20
        make WHAT="${BINARIES[*]/#/cmd/}" >&2
    )
    end=$(date +%s)

    mkdir -p "$BIN_DIR"
    local bin
    for bin in "${BINARIES[@]}"; do
        install -m 0755 "$src/_output/local/go/bin/$bin" "$BIN_DIR/$bin"
    done
    log "built in $((end - start)) s"
    # The binaries are what we keep; the source, object cache and Go build
    # cache are several GB.
    rm -rf "$src_root" "$CACHE_DIR/gocache" "$CACHE_DIR/gopath"
}

main() {
    if cached; then
        if packages_missing; then
            [[ $(id -u) -eq 0 ]] || die "missing packages (${PACKAGES[*]}); run as root to install them"
            install_packages
        fi
        log "cached: $BIN_DIR"
        printf '%s\n' "$BIN_DIR"
        return
    fi
    [[ $(id -u) -eq 0 ]] || die "the upstream binaries are not in $BIN_DIR; run as root to build them"
    install_packages
    build
    cached || die "the binaries in $BIN_DIR do not report Kubernetes v$K8S_VERSION"
    printf '%s\n' "$BIN_DIR"
}

main "$@"

#!/usr/bin/env bash
# Installs the Debian packages the demo and the tests need. Idempotent: when
# every package is already installed it does not touch apt at all.
#
# runc                         OCI runtime used by cri-shim (and containerd)
# iproute2 iptables            bridges, veths and NAT for the CNI plugins
# busybox-static               the userland inside the test images
# containernetworking-plugins  reference CNI plugins in /usr/lib/cni
# containerd                   second CRI runtime, for the end-to-end tests
# protobuf-compiler            protoc, needed to build the k8s-cri crate
# curl jq ca-certificates      used by the demo
# docker-registry              a local OCI/Docker registry for the image pull tests
# apache2-utils                htpasswd, for the registry with basic auth
# openssl                      a self-signed certificate for the HTTPS registry test
#
# The upstream Kubernetes 1.20 binaries and what building them needs (a
# bullseye source for golang-1.15-go, rsync, dpkg-dev; etcd-server) are
# installed by scripts/upstream-k8s.sh, which scripts/test.sh runs.
set -euo pipefail

packages=(
    runc
    iproute2
    iptables
    busybox-static
    containernetworking-plugins
    containerd
    protobuf-compiler
    curl
    jq
    ca-certificates
    docker-registry
    apache2-utils
    openssl
)

missing=()
for pkg in "${packages[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
    if [[ "$status" != installed ]]; then
        missing+=("$pkg")
    fi
done

if ((${#missing[@]} == 0)); then
    echo "install-deps: all packages present"
    exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
    echo "install-deps: missing packages: ${missing[*]}; run as root to install them" >&2
    exit 1
fi

echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"


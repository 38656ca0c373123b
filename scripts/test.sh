#!/usr/bin/env bash
# The test command: installs the Debian packages, builds the workspace and the
# test images, then runs every test of the workspace: unit tests, and the
# end-to-end trials in tests/ (real kubelet, cri-shim, runc, containerd and CNI
# plugins; they need root and report themselves as ignored without it).
#
#   bash scripts/test.sh [extra arguments for the test binaries]
#
# e.g. `bash scripts/test.sh -- --test-threads 1` or `bash scripts/test.sh static_pod`.
# Exits non-zero when anything fails.
set -euo pipefail
# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$REPO_ROOT"

step "Installing Debian packages"
bash scripts/install-deps.sh

ensure_cargo
step "Building the workspace (debug, all targets)"
cargo build --workspace --all-targets
target_dir=$(cargo_target_dir)

step "Building the test images into ${IMAGES_DIR#"$REPO_ROOT"/}"
mkdir -p "$IMAGES_DIR"
"$target_dir/debug/build-test-images" --out "$IMAGES_DIR"

if [[ $(id -u) -ne 0 ]]; then
    warn "not running as root: the end-to-end trials will be reported as ignored (needs root)"
fi

# The upstream kubelet 1.20 (and its control plane) for the tests that run it
# as a peer; built once from Debian's source package, cached outside the tree.
step "Upstream Kubernetes 1.20 binaries"
if upstream_dir=$(bash scripts/upstream-k8s.sh); then
    export UPSTREAM_K8S_BIN_DIR="$upstream_dir"
    echo "UPSTREAM_K8S_BIN_DIR=$UPSTREAM_K8S_BIN_DIR"
elif [[ $(id -u) -ne 0 ]]; then
    warn "no upstream Kubernetes binaries: the upstream trials will be reported as ignored"
else
    die "building the upstream Kubernetes binaries failed (scripts/upstream-k8s.sh)"
fi

step "Running the tests"
log=$(mktemp "${TMPDIR:-/tmp}/kubelet-rs-test.XXXXXX")
trap 'rm -f "$log"' EXIT
set +e
trap - ERR # a failure is reported below, after the summary
E2E_IMAGES_DIR="$IMAGES_DIR" cargo test --workspace --no-fail-fast "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e

# One line per test binary, so the outcome is readable at the end of a long log.
step "Summary"
awk '
    /^ *Running / {
        line = $0; sub(/^ *Running /, "", line)
        binary = line; sub(/.*deps\//, "", binary); sub(/-[0-9a-f]+\)$/, "", binary)
        sub(/ \(.*/, "", line)
        target = binary ": " line
    }
    /^ *Doc-tests / { sub(/^ */, ""); target = $0 }
    /^test result: (ok|FAILED)\./ { printf "%-45s %s\n", target, $0 }
' "$log"
if grep -q 'needs root' "$log"; then
    warn "some trials were ignored because they need root"
fi
if ((status != 0)); then
    printf '%sFAILED%s: cargo test exited with status %d\n' "$RED" "$RESET" "$status"
    exit "$status"
fi
printf '%sall tests passed%s\n' "$BOLD" "$RESET"

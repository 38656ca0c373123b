# Helpers shared by demo.sh and test.sh. Sourced, not run.
# shellcheck shell=bash

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck disable=SC2034 # used by the scripts that source this file
IMAGES_DIR="$REPO_ROOT/tests/images/out"

if [[ -t 1 ]]; then
    BOLD=$'\033[1m' RED=$'\033[1;31m' RESET=$'\033[0m'
else
    BOLD='' RED='' RESET=''
fi

# With `set -e` a failing command ends the script; say which one (-E: also
# inside functions and command substitutions).
set -E
trap 'printf "%serror:%s \"%s\" failed with status %d (%s line %d)\n" "$RED" "$RESET" "$BASH_COMMAND" "$?" "$(basename "${BASH_SOURCE[0]:-$0}")" "$LINENO" >&2' ERR

step() { printf '\n%s==> %s%s\n' "$BOLD" "$*" "$RESET"; }
warn() { printf '%swarning:%s %s\n' "$RED" "$RESET" "$*" >&2; }
die() {
    printf '%serror:%s %s\n' "$RED" "$RESET" "$*" >&2
    exit 1
}

# rustup installs cargo into ~/.cargo/bin, which a root login shell may not
# have on PATH.
ensure_cargo() {
    if ! command -v cargo >/dev/null 2>&1; then
        local dir="${CARGO_HOME:-$HOME/.cargo}/bin"
        [[ -x "$dir/cargo" ]] && PATH="$dir:$PATH"
    fi
    command -v cargo >/dev/null 2>&1 || die "cargo not found: install the Rust toolchain (rustup)"
}

# The target directory cargo really uses (CARGO_TARGET_DIR, .cargo/config, ...).
cargo_target_dir() {
    cargo metadata --format-version 1 --no-deps --manifest-path "$REPO_ROOT/Cargo.toml" |
        jq -r .target_directory
}

#!/usr/bin/env bash
# The demo: builds the workspace and the test images, starts the kubelet on its
# embedded runtime (cri-shim) with the static pods of examples/static-pods/,
# shows the pods, their IPs, an HTTP answer from the web pod and the logger's
# log, then follows the kubelet log until Ctrl-C. On exit it removes the pods
# and checks that no containers, mounts, network namespaces, veths or NAT
# rules are left behind.
#
#   bash scripts/demo.sh            runs until Ctrl-C
#   bash scripts/demo.sh --once     (or DEMO_NONINTERACTIVE=1) shows everything,
#                                   then tears down and exits
#
# Needs root on Debian 12. Uses /var/lib/kubelet, /var/lib/cri-shim,
# /var/log/pods, and /etc/cni/net.d (a bridge config is installed there only
# when the directory holds no network config).
set -euo pipefail
# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$REPO_ROOT"

once=${DEMO_NONINTERACTIVE:-0}
for arg in "$@"; do
    case "$arg" in
        --once) once=1 ;;
        -h | --help)
            sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *) die "unknown argument $arg (try --help)" ;;
    esac
done

NODE_NAME=${DEMO_NODE_NAME:-$(hostname | tr '[:upper:]' '[:lower:]')}
KUBELET_ROOT=/var/lib/kubelet
SHIM_ROOT=/var/lib/cri-shim
ENDPOINT="unix://$KUBELET_ROOT/cri-shim.sock"
CNI_CONF_DIR=/etc/cni/net.d
CNI_NETWORK=kubelet-rs
BRIDGE=kubeletrs0
START_TIMEOUT=${DEMO_START_TIMEOUT:-120}
STOP_TIMEOUT=${DEMO_STOP_TIMEOUT:-60}
PODS=("web-$NODE_NAME" "logger-$NODE_NAME")

[[ $(id -u) -eq 0 ]] || die "the demo needs root (it runs containers and sets up a bridge)"

step "Installing Debian packages"
bash scripts/install-deps.sh

ensure_cargo
step "Building the workspace (release)"
cargo build --release --workspace
bin="$(cargo_target_dir)/release"
kubelet_bin=$(realpath "$bin/kubelet")
shim_bin=$(realpath "$bin/cri-shim")
helper_bin=$(realpath "$bin/cri-shim-helper")

step "Building the test images into ${IMAGES_DIR#"$REPO_ROOT"/}"
mkdir -p "$IMAGES_DIR"
"$bin/build-test-images" --out "$IMAGES_DIR"

step "Importing the images into $SHIM_ROOT"
for image in busybox busybox-httpd; do
    "$shim_bin" --root "$SHIM_ROOT" import "$IMAGES_DIR/$image.tar"
done

step "Pod network"
shopt -s nullglob
existing=("$CNI_CONF_DIR"/*.conf "$CNI_CONF_DIR"/*.conflist "$CNI_CONF_DIR"/*.json)
shopt -u nullglob
if ((${#existing[@]} == 0)); then
    mkdir -p "$CNI_CONF_DIR"
    install -m 0644 examples/cni/10-kubelet-rs.conflist "$CNI_CONF_DIR/"
    echo "installed examples/cni/10-kubelet-rs.conflist into $CNI_CONF_DIR (bridge $BRIDGE, 10.88.0.0/16)"
else
    echo "using the network config already in $CNI_CONF_DIR: ${existing[*]}"
fi
bridge_existed=0
ip link show "$BRIDGE" >/dev/null 2>&1 && bridge_existed=1

if [[ -S "$KUBELET_ROOT/cri-shim.sock" ]] && "$shim_bin" ps --endpoint "$ENDPOINT" >/dev/null 2>&1; then
    die "a kubelet already serves $ENDPOINT; stop it first"
fi

# What the host looks like before the demo, to find leftovers afterwards.
snapshot_host() {
    {
        echo "# interfaces on $BRIDGE"
        { ip -o link show master "$BRIDGE" 2>/dev/null || true; } | awk -F': ' '{ sub(/@.*/, "", $2); print $2 }'
        echo "# netns"
        ip netns list 2>/dev/null | awk '{ print $1 }'
        echo "# mounts"
        awk -v a="$KUBELET_ROOT/" -v b="$SHIM_ROOT/" \
            'index($5, a) == 1 || index($5, b) == 1 { print $5 }' /proc/self/mountinfo
        echo "# ip reservations"
        find "/var/lib/cni/networks/$CNI_NETWORK" -maxdepth 1 -name '[0-9]*.*' -printf '%f\n' 2>/dev/null || true
        echo "# runc containers"
        runc --root "$SHIM_ROOT/runc" list -q 2>/dev/null || true
        echo "# nat chains"
        iptables-save -t nat 2>/dev/null | grep -E '^:CNI-' | cut -d' ' -f1 || true
    } | sort
}
snapshot_host >/dev/null # fail early if a tool is missing
host_before=$(snapshot_host)

work_dir=$(mktemp -d /tmp/kubelet-rs-demo.XXXXXX)
manifest_dir="$work_dir/manifests"
kubelet_log="$work_dir/kubelet.log"
mkdir -p "$manifest_dir"
cp examples/static-pods/*.yaml "$manifest_dir/"

kubelet_pid=
following=0

# Prints the `cri-shim ps` lines of pod $1 (matched as a whole word).
pod_lines() {
    grep -E "(^|[[:space:]/])$1([[:space:]]|$)" <<<"$2" || true
}

pod_ip() {
    pod_lines "$1" "$2" | grep -oE '([0-9]{1,3}\.){3}[0-9]{1,3}' | head -n1 || true
}

# The newest log file of container $2 in pod $1.
container_log() {
    find /var/log/pods -mindepth 3 -maxdepth 3 -path "/var/log/pods/default_$1_*/$2/*.log" \
        -printf '%T@ %p\n' 2>/dev/null | sort -rn | head -n1 | cut -d' ' -f2- || true
}

runtime_ps() {
    "$shim_bin" ps --endpoint "$ENDPOINT" 2>/dev/null
}

stop_kubelet() {
    kill -TERM "$kubelet_pid" 2>/dev/null || true
    local deadline=$((SECONDS + 15))
    while kill -0 "$kubelet_pid" 2>/dev/null && ((SECONDS < deadline)); do
        sleep 0.5
    done
    if kill -0 "$kubelet_pid" 2>/dev/null; then
        warn "the kubelet did not exit within 15 s of SIGTERM; killing it"
        kill -KILL "$kubelet_pid" 2>/dev/null || true
    fi
    local status=0
    wait "$kubelet_pid" 2>/dev/null || status=$?
    echo "kubelet exited with status $status"
}

# Processes still running one of the demo's binaries (the embedded runtime
# re-executes the kubelet binary as sandbox infra and container monitor).
leftover_processes() {
    local exe pid
    for pid in /proc/[0-9]*; do
        exe=$(readlink "$pid/exe" 2>/dev/null) || continue
        case "$exe" in
            "$kubelet_bin" | "$kubelet_bin (deleted)" | "$shim_bin" | "$shim_bin (deleted)")
                echo "process ${pid#/proc/}: $(tr '\0' ' ' <"$pid/cmdline")"
                ;;
        esac
    done
}

teardown() {
    local status=$?
    # Ctrl-C is the normal way to end the interactive demo.
    ((status == 130 && following)) && status=0
    trap '' INT TERM
    trap - EXIT ERR
    set +e
    if [[ -n "$kubelet_pid" ]]; then
        step "Tearing down: removing the manifests and waiting for the pods to go"
        rm -f "$manifest_dir"/*
        local deadline=$((SECONDS + STOP_TIMEOUT)) gone=0 out pod remaining
        while ((SECONDS < deadline)) && kill -0 "$kubelet_pid" 2>/dev/null; do
            if out=$(runtime_ps); then
                remaining=0
                for pod in "${PODS[@]}"; do
                    [[ -n "$(pod_lines "$pod" "$out")" ]] && remaining=1
                done
                if ((remaining == 0)); then
                    gone=1
                    break
                fi
            fi
            sleep 1
        done
        if ((gone)); then
            echo "the runtime lists no demo pods any more"
        else
            warn "the demo pods were still there after ${STOP_TIMEOUT} s (or the kubelet died):"
            runtime_ps >&2
        fi
        stop_kubelet

        if ((bridge_existed == 0)) && ip link show "$BRIDGE" >/dev/null 2>&1 &&
            [[ -z "$(ip -o link show master "$BRIDGE" 2>/dev/null)" ]]; then
            ip link del "$BRIDGE" && echo "deleted the bridge $BRIDGE the demo created"
        fi

        step "Checking for leftovers"
        local host_after new_things procs
        host_after=$(snapshot_host)
        new_things=$(comm -13 <(echo "$host_before") <(echo "$host_after") | grep -v '^#')
        procs=$(leftover_processes)
        if ((gone)) && [[ -z "$new_things" && -z "$procs" ]]; then
            echo "clean: no containers, mounts, network namespaces, veths, IP reservations or NAT chains left"
        else
            printf '\n%s!!! LEFTOVERS after the demo !!!%s\n' "$RED" "$RESET" >&2
            [[ -n "$new_things" ]] && printf 'new on the host since the demo started:\n%s\n' "$new_things" >&2
            [[ -n "$procs" ]] && printf 'still running:\n%s\n' "$procs" >&2
            ((gone)) || echo "the kubelet did not remove its pods" >&2
            ((status == 0 || status >= 128)) && status=1
        fi
        echo "kubelet log: $kubelet_log"
    fi
    exit "$status"
}
trap teardown EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

step "Starting the kubelet (node $NODE_NAME, embedded runtime, manifests in $manifest_dir)"
# setsid: Ctrl-C in the terminal must reach this script only. The kubelet
# leaves its pods running when it gets SIGINT, and the teardown above needs it
# alive to remove them.
setsid "$kubelet_bin" \
    --pod-manifest-path "$manifest_dir" \
    --root-dir "$KUBELET_ROOT" \
    --cri-shim-root "$SHIM_ROOT" \
    --cri-shim-helper-path "$helper_bin" \
    --hostname-override "$NODE_NAME" \
    --cni-conf-dir "$CNI_CONF_DIR" \
    </dev/null >"$kubelet_log" 2>&1 &
kubelet_pid=$!
echo "kubelet pid $kubelet_pid, log $kubelet_log"

step "Waiting for the pods (up to ${START_TIMEOUT} s)"
deadline=$((SECONDS + START_TIMEOUT))
web_ip='' answer='' logger_log=''
while :; do
    if ! kill -0 "$kubelet_pid" 2>/dev/null; then
        tail -n 30 "$kubelet_log" >&2
        die "the kubelet exited; its log is above"
    fi
    out=$(runtime_ps) || out=''
    web_ip=$(pod_ip "web-$NODE_NAME" "$out")
    if [[ -n "$web_ip" && -z "$answer" ]]; then
        answer=$(curl -sS --noproxy '*' --max-time 3 "http://$web_ip/" 2>/dev/null) || answer=''
    fi
    logger_log=$(container_log "logger-$NODE_NAME" logger)
    if [[ -n "$answer" && -n "$logger_log" ]] && grep -q tick "$logger_log"; then
        break
    fi
    if ((SECONDS >= deadline)); then
        echo "runtime state:" >&2
        echo "$out" >&2
        tail -n 30 "$kubelet_log" >&2
        die "the pods did not come up within ${START_TIMEOUT} s"
    fi
    sleep 1
done

step "Pods and containers (cri-shim ps --endpoint $ENDPOINT)"
runtime_ps

step "HTTP answer from the web pod (curl http://$web_ip/)"
echo "$answer"

step "The logger's log, in the CRI format ($logger_log)"
sleep 3 # a few more ticks
tail -n 5 "$logger_log"

if ((once)); then
    exit 0
fi
step "Following the kubelet log. Press Ctrl-C to stop the demo and remove the pods."
following=1
tail --pid="$kubelet_pid" -n 20 -f "$kubelet_log" || true
if ! kill -0 "$kubelet_pid" 2>/dev/null; then
    die "the kubelet exited unexpectedly"
fi

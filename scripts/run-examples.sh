#!/usr/bin/env bash
# Runs every example agent in examples/ against `agent-access-proxy demo`, which is the
# proxy in front of its verifying stand-in of the API. After each agent, the stand-in's
# unsigned /_stand-in/state endpoint must show the agent's artifact, its proposal and
# exactly one event, although the agent sent the event twice.
#
# Agents whose runtime is missing are skipped: Python 3, Node.js 20 or later, Go, and the
# shell agent (bash, curl and python3). When go is missing and this runs as root, golang-go
# is installed from Debian's packages unless RUN_EXAMPLES_INSTALL_GO=0.
#
# Usage: scripts/run-examples.sh
# Environment:
#   AGENT_ACCESS_PROXY_BIN   use this binary instead of building one
#   CARGO_TARGET_DIR         where the build goes (default: target/)
#   RUN_EXAMPLES_INSTALL_GO  1 (default) or 0
#
# Everything started here listens on 127.0.0.1 and is stopped on exit.

set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORKSPACE=ws_demo
# Bounds: 150 polls of 0.1 s for the demo to start, 120 s for one agent run.
WAIT_POLLS=150
AGENT_TIMEOUT_SECONDS=120

PASSED=0
FAILED=0
SKIPPED=0
DEMO_PID=
WORK=$(mktemp -d "${TMPDIR:-/tmp}/run-examples.XXXXXX")

# Stops the demo with SIGTERM, and with SIGKILL if it still runs 5 s later.
cleanup() {
    local attempt
    if [[ -n "$DEMO_PID" ]]; then
        kill "$DEMO_PID" 2>/dev/null || true
        for ((attempt = 0; attempt < 50; attempt++)); do
            is_running "$DEMO_PID" || break
            sleep 0.1
        done
        kill -KILL "$DEMO_PID" 2>/dev/null || true
        wait "$DEMO_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

pass() {
    PASSED=$((PASSED + 1))
    printf 'ok: %s\n' "$1"
}

fail() {
    FAILED=$((FAILED + 1))
    printf 'FAILED: %s\n' "$1" >&2
}

skip() {
    SKIPPED=$((SKIPPED + 1))
    printf 'skipped: %s\n' "$1"
}

# Succeeds while the process runs. A child that exited stays a zombie until waited for,
# and kill -0 still succeeds on a zombie, so the state is read from /proc.
is_running() {
    local state
    state=$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null)
    [[ -n "$state" && "$state" != Z ]]
}

# ---------------------------------------------------------------------------------------
# The proxy binary.

BIN=${AGENT_ACCESS_PROXY_BIN:-}
if [[ -z "$BIN" ]]; then
    BIN="${CARGO_TARGET_DIR:-$REPO/target}/release/agent-access-proxy"
    echo "building $BIN"
    (cd "$REPO" && cargo build --release --locked)
fi
if [[ ! -x "$BIN" ]]; then
    echo "error: no executable at $BIN; build it or set AGENT_ACCESS_PROXY_BIN" >&2
    exit 1
fi

# ---------------------------------------------------------------------------------------
# The demo: proxy and stand-in, with all four scopes so that every step is allowed.

PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
"$BIN" demo --listen "127.0.0.1:$PORT" --workspace "$WORKSPACE" \
    --scope env:read --scope artifacts:write --scope files:propose --scope events:write \
    >"$WORK/demo.log" 2>&1 &
DEMO_PID=$!

BASE_URL="http://127.0.0.1:$PORT"
STAND_IN_URL=
for ((attempt = 0; attempt < WAIT_POLLS; attempt++)); do
    if ! is_running "$DEMO_PID"; then
        break
    fi
    # The banner names the stand-in's loopback address, which the demo picks itself.
    STAND_IN_URL=$(grep -o 'stand-in of the API: http://[0-9.:]*' "$WORK/demo.log" | awk '{ print $NF }' || true)
    if [[ -n "$STAND_IN_URL" ]] &&
        curl -fsS --max-time 1 -o /dev/null "$BASE_URL/agent-api/v1/workspaces/$WORKSPACE/environment" 2>/dev/null; then
        break
    fi
    STAND_IN_URL=
    sleep 0.1
done
if [[ -z "$STAND_IN_URL" ]]; then
    cat "$WORK/demo.log" >&2
    echo "error: the demo did not start within $((WAIT_POLLS / 10)) s" >&2
    exit 1
fi
echo "demo: proxy $BASE_URL, stand-in $STAND_IN_URL"

# ---------------------------------------------------------------------------------------
# The agents.

# Checks the stand-in's state for one run: an artifact whose title names the run, a
# proposal whose content names it, and exactly one event with the run's idempotency key,
# although the agent sent it twice.
check_landed() {
    local run_id=$1
    curl -fsS --max-time 5 "$STAND_IN_URL/_stand-in/state" >"$WORK/state.json"
    python3 - "$WORK/state.json" "$run_id" <<'PYTHON'
import json, sys

state = json.load(open(sys.argv[1]))
run_id = sys.argv[2]
artifacts = [a for a in state["artifacts"] if run_id in a["title"]]
proposals = [p for p in state["proposals"] if run_id in p["content"]]
events = [e for e in state["events"] if e["idempotencyKey"] == f"{run_id}:done"]
problems = []
if len(artifacts) != 1:
    problems.append(f"expected 1 artifact for {run_id}, found {len(artifacts)}")
elif not artifacts[0]["path"].startswith("artifacts/"):
    problems.append(f"artifact path {artifacts[0]['path']} is not under artifacts/")
if len(proposals) != 1:
    problems.append(f"expected 1 proposal for {run_id}, found {len(proposals)}")
elif proposals[0]["status"] != "pending":
    problems.append(f"proposal status is {proposals[0]['status']}, expected pending")
if len(events) != 1:
    problems.append(f"expected 1 event with key {run_id}:done, found {len(events)}")
elif events[0]["eventType"] != "agent.run.completed":
    problems.append(f"event type is {events[0]['eventType']}")
for problem in problems:
    print("error:", problem)
sys.exit(1 if problems else 0)
PYTHON
}

# Runs one agent command with the demo's base URL and a fresh run id, then checks the state.
run_agent() {
    local name=$1
    shift
    local run_id
    run_id="example-$name-$$-$(date +%s)"
    echo
    echo "== $name agent"
    if ! env AGENT_ACCESS_BASE_URL="$BASE_URL" AGENT_ACCESS_WORKSPACE="$WORKSPACE" AGENT_RUN_ID="$run_id" \
        timeout "$AGENT_TIMEOUT_SECONDS" "$@"; then
        fail "$name agent run"
        return
    fi
    if check_landed "$run_id"; then
        pass "$name agent: artifact, proposal and one event arrived"
    else
        fail "$name agent: artifact, proposal and one event arrived"
    fi
}

# Python
if command -v python3 >/dev/null && python3 -c 'import sys; sys.exit(sys.version_info < (3, 8))'; then
    run_agent python python3 "$REPO/examples/python/agent.py"
else
    skip "python agent: python3 3.8 or later not found"
fi

# Node.js
if command -v node >/dev/null && node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)'; then
    run_agent node node "$REPO/examples/node/agent.mjs"
else
    skip "node agent: Node.js 20 or later not found"
fi

# Go
if ! command -v go >/dev/null && [[ $(id -u) -eq 0 && ${RUN_EXAMPLES_INSTALL_GO:-1} == 1 ]]; then
    echo "installing golang-go"
    if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends golang-go; } >"$WORK/apt.log" 2>&1; then
        cat "$WORK/apt.log" >&2
        echo "installing golang-go failed" >&2
    fi
fi
if command -v go >/dev/null; then
    # The example has no dependencies: GOPROXY=off and GOTOOLCHAIN=local keep go from
    # downloading modules or a newer toolchain.
    if (cd "$REPO/examples/go" && GOPROXY=off GOTOOLCHAIN=local GOFLAGS=-mod=mod go build -o "$WORK/go-agent" .); then
        run_agent go "$WORK/go-agent"
    else
        fail "go agent build"
    fi
else
    skip "go agent: go not found"
fi

# Shell
if command -v curl >/dev/null && command -v python3 >/dev/null; then
    run_agent shell bash "$REPO/examples/shell/agent.sh"
else
    skip "shell agent: curl or python3 not found"
fi

# ---------------------------------------------------------------------------------------
# The demo must still be running: an agent must not have crashed it.
if is_running "$DEMO_PID"; then
    pass "the demo is still running after all agents"
else
    cat "$WORK/demo.log" >&2
    fail "the demo is still running after all agents"
fi

printf '\n%d passed, %d failed, %d skipped\n' "$PASSED" "$FAILED" "$SKIPPED"
((FAILED == 0))

#!/usr/bin/env bash
# Example agent: one full run against the Agent Access API through agent-access-proxy.
#
# It reads the environment, the prompts and the file tree, reads one file, writes an
# artifact, proposes an edit to the file and logs a completion event. It sends plain HTTP
# to the proxy, which signs each request, so this script never has the key or its secret.
#
# Settings (environment variables):
#   AGENT_ACCESS_BASE_URL   the proxy, default http://127.0.0.1:8080
#   AGENT_ACCESS_WORKSPACE  workspace id, default ws_demo
#   AGENT_RUN_ID            id of this run, used in the idempotency key; default: generated
#
# Needs curl for HTTP and python3 to read and write JSON, because JSON bodies with file
# content need real escaping.

set -euo pipefail

BASE_URL=${AGENT_ACCESS_BASE_URL:-http://127.0.0.1:8080}
BASE_URL=${BASE_URL%/}
WORKSPACE=${AGENT_ACCESS_WORKSPACE:-ws_demo}
RUN_ID=${AGENT_RUN_ID:-shell-$(date +%s)-$$}
API="$BASE_URL/agent-api/v1/workspaces/$WORKSPACE"

RESPONSE=$(mktemp)
HEADERS=$(mktemp)
trap 'rm -f "$RESPONSE" "$HEADERS"' EXIT

# Sends one request, with the body written to $RESPONSE and the status code to $STATUS.
# Exits on a status outside 2xx, naming the proxy's error code when the proxy generated
# the error itself.
api() {
    local method=$1 path=$2 body=${3:-}
    local args=(-sS --max-time 30 -X "$method" -o "$RESPONSE" -D "$HEADERS" -w '%{http_code}'
        -H 'accept: application/json')
    if [[ -n "$body" ]]; then
        args+=(-H 'content-type: application/json' --data-binary "$body")
    fi
    if ! STATUS=$(curl "${args[@]}" "$API$path"); then
        echo "error: $method $path failed: cannot reach the proxy at $BASE_URL" >&2
        exit 1
    fi
    if [[ $STATUS != 2?? ]]; then
        # The proxy marks the errors it generates itself (denied route, upstream down)
        # with this header, so they can be distinguished from the API's own errors.
        local origin source="API error"
        origin=$(tr -d '\r' <"$HEADERS" | sed -n 's/^x-agent-access-proxy-error: *//Ip')
        if [[ -n "$origin" ]]; then
            source="proxy error $origin"
        fi
        echo "error: $method $path failed with $STATUS ($source): $(cat "$RESPONSE")" >&2
        exit 1
    fi
}

# Prints a value of the last response: json EXPRESSION [ARGUMENT...]. The Python expression
# gets the decoded body as `r` and the arguments as the list `a`.
json() {
    python3 -c 'import json, sys; r = json.load(open(sys.argv[1])); a = sys.argv[3:]; print(eval(sys.argv[2]))' "$RESPONSE" "$@"
}

# Prints a JSON object built from alternating key and value arguments.
json_object() {
    python3 -c 'import json, sys; a = sys.argv[1:]; print(json.dumps(dict(zip(a[::2], a[1::2]))))' "$@"
}

echo "run $RUN_ID: workspace $WORKSPACE through $BASE_URL"

api GET /environment
WORKSPACE_NAME=$(json 'r["workspace"]["name"]')
echo "environment: workspace '$WORKSPACE_NAME' ($(json 'r["workspace"]["id"]'))"

api GET /prompts
PROMPT_NAMES=$(json '", ".join(p["name"] for p in r["prompts"])')
echo "prompts: $(json 'len(r["prompts"])') ($PROMPT_NAMES)"

api GET /file-tree
echo "file tree: $(json 'len(r["nodes"])') nodes, $(json 'len([n for n in r["nodes"] if n["kind"] == "file"])') files"
# Prefer the memory file, which is what an agent would propose edits to.
NODE_ID=$(json 'next((n["id"] for n in r["nodes"] if n["kind"] == "file" and n["path"].startswith("memory/")), next((n["id"] for n in r["nodes"] if n["kind"] == "file"), ""))')
if [[ -z "$NODE_ID" ]]; then
    echo "error: the workspace has no file to read" >&2
    exit 1
fi

api GET "/files/$NODE_ID"
FILE_PATH=$(json 'r["path"]')
FILE_CONTENT=$(json 'r["content"]')
echo "read $FILE_PATH: $(json 'len(r["content"])') characters"

ARTIFACT_TEXT="# Run $RUN_ID

- Workspace: $WORKSPACE_NAME
- Prompts available: $PROMPT_NAMES
- Read \`$FILE_PATH\`
"
api POST /artifacts "$(json_object title "Shell agent run $RUN_ID" text "$ARTIFACT_TEXT")"
ARTIFACT_ID=$(json 'r["id"]')
echo "artifact written: $ARTIFACT_ID at $(json 'r["path"]')"

# $(...) already removed the content's trailing newlines.
NEW_CONTENT="$FILE_CONTENT
- Reviewed by the shell example agent in run $RUN_ID.
"
api POST "/files/$NODE_ID/proposals" "$(json_object content "$NEW_CONTENT")"
PROPOSAL_ID=$(json 'r["id"]')
echo "proposal for $FILE_PATH: $PROPOSAL_ID ($(json 'r["status"]'))"

EVENT=$(json_object idempotencyKey "$RUN_ID:done" eventType agent.run.completed occurredAt "$(date -u +%Y-%m-%dT%H:%M:%SZ)")
api POST /events "$EVENT"
EVENT_ID=$(json 'r["id"]')
echo "event logged: $EVENT_ID (status $STATUS, duplicate $(json 'json.dumps(r["duplicate"])'))"
# A retry with the same idempotency key is safe: the API returns the first event.
api POST /events "$EVENT"
echo "event retried: $(json 'r["id"]') (status $STATUS, duplicate $(json 'json.dumps(r["duplicate"])'))"

api GET /file-tree
LANDED=$(json 'next((n["path"] for n in r["nodes"] if n["id"] == a[0]), "NOT FOUND")' "$ARTIFACT_ID")
echo "landed: artifact $ARTIFACT_ID in the file tree at $LANDED, proposal $PROPOSAL_ID, event $EVENT_ID"
[[ $LANDED != "NOT FOUND" ]]

#!/usr/bin/env python3
"""Example agent: one full run against the Agent Access API through agent-access-proxy.

It reads the environment, the prompts and the file tree, reads one file, writes an
artifact, proposes an edit to the file and logs a completion event. It sends plain HTTP
to the proxy, which signs each request, so this program never has the key or its secret.

Settings (environment variables):
  AGENT_ACCESS_BASE_URL   the proxy, default http://127.0.0.1:8080
  AGENT_ACCESS_WORKSPACE  workspace id, default ws_demo
  AGENT_RUN_ID            id of this run, used in the idempotency key; default: generated

Standard library only, Python 3.8 or later.
"""

import datetime
import json
import os
import sys
import time
import urllib.error
import urllib.request
import uuid

BASE_URL = os.environ.get("AGENT_ACCESS_BASE_URL", "http://127.0.0.1:8080").rstrip("/")
WORKSPACE = os.environ.get("AGENT_ACCESS_WORKSPACE", "ws_demo")
RUN_ID = os.environ.get("AGENT_RUN_ID") or f"python-{int(time.time())}-{uuid.uuid4().hex[:8]}"
TIMEOUT_SECONDS = 30


class ApiError(Exception):
    """A response with a status outside 2xx, from the proxy or from the API."""


def call(method, path, body=None):
    """Send one request to the workspace and return (status, decoded JSON body)."""
    url = f"{BASE_URL}/agent-api/v1/workspaces/{WORKSPACE}{path}"
    data = None
    headers = {"accept": "application/json"}
    if body is not None:
        data = json.dumps(body).encode("utf-8")
        headers["content-type"] = "application/json"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        # The proxy marks the errors it generates itself (denied route, upstream down)
        # with this header, so they can be distinguished from the API's own errors.
        origin = error.headers.get("x-agent-access-proxy-error")
        source = f"proxy error {origin}" if origin else "API error"
        detail = error.read().decode("utf-8", "replace")
        raise ApiError(f"{method} {path} failed with {error.code} ({source}): {detail}") from None
    except urllib.error.URLError as error:
        raise ApiError(f"{method} {path} failed: cannot reach the proxy at {BASE_URL}: {error.reason}") from None


def main():
    print(f"run {RUN_ID}: workspace {WORKSPACE} through {BASE_URL}")

    _, environment = call("GET", "/environment")
    print(f"environment: workspace '{environment['workspace']['name']}' ({environment['workspace']['id']})")

    _, prompts = call("GET", "/prompts")
    names = ", ".join(prompt["name"] for prompt in prompts["prompts"])
    print(f"prompts: {len(prompts['prompts'])} ({names})")

    _, tree = call("GET", "/file-tree")
    files = [node for node in tree["nodes"] if node["kind"] == "file"]
    print(f"file tree: {len(tree['nodes'])} nodes, {len(files)} files")
    if not files:
        raise ApiError("the workspace has no file to read")
    # Prefer the memory file, which is what an agent would propose edits to.
    target = next((node for node in files if node["path"].startswith("memory/")), files[0])

    _, file = call("GET", f"/files/{target['id']}")
    print(f"read {file['path']}: {len(file['content'])} characters")

    artifact_text = (
        f"# Run {RUN_ID}\n\n"
        f"- Workspace: {environment['workspace']['name']}\n"
        f"- Prompts available: {names}\n"
        f"- Read `{file['path']}` ({len(file['content'])} characters)\n"
    )
    _, artifact = call("POST", "/artifacts", {"title": f"Python agent run {RUN_ID}", "text": artifact_text})
    print(f"artifact written: {artifact['id']} at {artifact['path']}")

    new_content = file["content"].rstrip("\n") + f"\n- Reviewed by the Python example agent in run {RUN_ID}.\n"
    _, proposal = call("POST", f"/files/{target['id']}/proposals", {"content": new_content})
    print(f"proposal for {file['path']}: {proposal['id']} ({proposal['status']})")

    occurred_at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
    event = {"idempotencyKey": f"{RUN_ID}:done", "eventType": "agent.run.completed", "occurredAt": occurred_at}
    status, logged = call("POST", "/events", event)
    print(f"event logged: {logged['id']} (status {status}, duplicate {json.dumps(logged['duplicate'])})")
    # A retry with the same idempotency key is safe: the API returns the first event.
    status, again = call("POST", "/events", event)
    print(f"event retried: {again['id']} (status {status}, duplicate {json.dumps(again['duplicate'])})")

    _, tree = call("GET", "/file-tree")
    landed = [node["path"] for node in tree["nodes"] if node["id"] == artifact["id"]]
    print(f"landed: artifact {artifact['id']} in the file tree at {landed[0] if landed else 'NOT FOUND'}, "
          f"proposal {proposal['id']}, event {logged['id']}")
    return 0 if landed else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ApiError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)

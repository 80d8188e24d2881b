#!/usr/bin/env node
// Example agent: one full run against the Agent Access API through agent-access-proxy.
//
// It reads the environment, the prompts and the file tree, reads one file, writes an
// artifact, proposes an edit to the file and logs a completion event. It sends plain HTTP
// to the proxy, which signs each request, so this program never has the key or its secret.
//
// Settings (environment variables):
//   AGENT_ACCESS_BASE_URL   the proxy, default http://127.0.0.1:8080
//   AGENT_ACCESS_WORKSPACE  workspace id, default ws_demo
//   AGENT_RUN_ID            id of this run, used in the idempotency key; default: generated
//
// Node.js 20 or later (built-in fetch), no packages.

import { randomUUID } from "node:crypto";

const BASE_URL = (process.env.AGENT_ACCESS_BASE_URL || "http://127.0.0.1:8080").replace(/\/+$/, "");
const WORKSPACE = process.env.AGENT_ACCESS_WORKSPACE || "ws_demo";
const RUN_ID = process.env.AGENT_RUN_ID || `node-${Math.floor(Date.now() / 1000)}-${randomUUID().slice(0, 8)}`;
const TIMEOUT_MS = 30_000;

class ApiError extends Error {}

/** Sends one request to the workspace and returns { status, body } with the decoded JSON body. */
async function call(method, path, body) {
  const url = `${BASE_URL}/agent-api/v1/workspaces/${WORKSPACE}${path}`;
  const init = { method, headers: { accept: "application/json" }, signal: AbortSignal.timeout(TIMEOUT_MS) };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["content-type"] = "application/json";
  }
  let response;
  try {
    response = await fetch(url, init);
  } catch (error) {
    throw new ApiError(`${method} ${path} failed: cannot reach the proxy at ${BASE_URL}: ${error.cause?.message ?? error.message}`);
  }
  const text = await response.text();
  if (!response.ok) {
    // The proxy marks the errors it generates itself (denied route, upstream down) with this
    // header, so they can be distinguished from the API's own errors.
    const origin = response.headers.get("x-agent-access-proxy-error");
    const source = origin ? `proxy error ${origin}` : "API error";
    throw new ApiError(`${method} ${path} failed with ${response.status} (${source}): ${text}`);
  }
  return { status: response.status, body: JSON.parse(text) };
}

async function main() {
  console.log(`run ${RUN_ID}: workspace ${WORKSPACE} through ${BASE_URL}`);

  const { body: environment } = await call("GET", "/environment");
  console.log(`environment: workspace '${environment.workspace.name}' (${environment.workspace.id})`);

  const { body: prompts } = await call("GET", "/prompts");
  const names = prompts.prompts.map((prompt) => prompt.name).join(", ");
  console.log(`prompts: ${prompts.prompts.length} (${names})`);

  let { body: tree } = await call("GET", "/file-tree");
  const files = tree.nodes.filter((node) => node.kind === "file");
  console.log(`file tree: ${tree.nodes.length} nodes, ${files.length} files`);
  if (files.length === 0) {
    throw new ApiError("the workspace has no file to read");
  }
  // Prefer the memory file, which is what an agent would propose edits to.
  const target = files.find((node) => node.path.startsWith("memory/")) ?? files[0];

  const { body: file } = await call("GET", `/files/${target.id}`);
  console.log(`read ${file.path}: ${file.content.length} characters`);

  const artifactText =
    `# Run ${RUN_ID}\n\n` +
    `- Workspace: ${environment.workspace.name}\n` +
    `- Prompts available: ${names}\n` +
    `- Read \`${file.path}\` (${file.content.length} characters)\n`;
  const { body: artifact } = await call("POST", "/artifacts", { title: `Node.js agent run ${RUN_ID}`, text: artifactText });
  console.log(`artifact written: ${artifact.id} at ${artifact.path}`);

  const newContent = `${file.content.replace(/\n+$/, "")}\n- Reviewed by the Node.js example agent in run ${RUN_ID}.\n`;
  const { body: proposal } = await call("POST", `/files/${target.id}/proposals`, { content: newContent });
  console.log(`proposal for ${file.path}: ${proposal.id} (${proposal.status})`);

  const occurredAt = new Date().toISOString().replace(/\.\d{3}Z$/, "Z");
  const event = { idempotencyKey: `${RUN_ID}:done`, eventType: "agent.run.completed", occurredAt };
  const logged = await call("POST", "/events", event);
  console.log(`event logged: ${logged.body.id} (status ${logged.status}, duplicate ${logged.body.duplicate})`);
  // A retry with the same idempotency key is safe: the API returns the first event.
  const again = await call("POST", "/events", event);
  console.log(`event retried: ${again.body.id} (status ${again.status}, duplicate ${again.body.duplicate})`);

  ({ body: tree } = await call("GET", "/file-tree"));
  const landed = tree.nodes.find((node) => node.id === artifact.id);
  console.log(
    `landed: artifact ${artifact.id} in the file tree at ${landed ? landed.path : "NOT FOUND"}, ` +
      `proposal ${proposal.id}, event ${logged.body.id}`,
  );
  return landed ? 0 : 1;
}

try {
  process.exitCode = await main();
} catch (error) {
  if (!(error instanceof ApiError)) {
    throw error;
  }
  console.error(`error: ${error.message}`);
  process.exitCode = 1;
}

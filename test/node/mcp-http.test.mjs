// MCP Streamable HTTP (revision 2025-11-25): the MCP TypeScript SDK's own
// StreamableHTTPClientTransport against agentbridge's /mcp, in front of
// @modelcontextprotocol/server-everything over stdio behind `serve`: list
// tools, call echo, call the long-running operation with progress, list
// resources, two clients at once; raw fetch checks the refusals.
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import assert from "node:assert/strict";
import test from "node:test";
import { within } from "./lib/bridge.mjs";
import { withWsDaemon } from "./lib/wspeer.mjs";

const T = { timeout: 90000 };
const everything = { agent: ["node", "node_modules/@modelcontextprotocol/server-everything/dist/index.js", "stdio"] };

async function mcpClient(d, name, token = d.token) {
  const transport = new StreamableHTTPClientTransport(new URL(`${d.origin}/mcp`), { requestInit: { headers: { Authorization: `Bearer ${token}` } } });
  const client = new Client({ name, version: "0.0.0" });
  const errors = [];
  client.onerror = (e) => errors.push(e);
  await within(15000, `${name}: initialize`, client.connect(transport));
  d.defer(() => client.close());
  return { client, transport, errors };
}

test("the MCP SDK's Streamable HTTP client: tools, echo, progress, resources", T, () =>
  withWsDaemon(everything, async (d) => {
    const { client, transport } = await mcpClient(d, "mcp-http-a");
    assert.match(transport.sessionId ?? "", /^[0-9a-f-]{36}$/);
    const tools = await within(10000, "tools/list", client.listTools());
    assert.ok(tools.tools.some((t) => t.name === "echo"));
    assert.ok(tools.tools.some((t) => t.name === "trigger-long-running-operation"));
    const echo = await within(10000, "echo", client.callTool({ name: "echo", arguments: { message: "over /mcp" } }));
    assert.match(echo.content[0].text, /over \/mcp/);
    const seen = [];
    const long = await within(30000, "the long-running operation", client.callTool(
      { name: "trigger-long-running-operation", arguments: { duration: 1, steps: 4 } },
      undefined,
      { onprogress: (p) => seen.push([p.progress, p.total]), timeout: 30000 },
    ));
    assert.match(long.content[0].text, /Steps: 4\./);
    // The response ends the POST's stream after its progress, in order.
    assert.deepEqual(seen, [[1, 4], [2, 4], [3, 4], [4, 4]]);
    const res = await within(10000, "resources/list", client.listResources());
    assert.ok(res.resources.length > 0);
  }),
);

test("two MCP SDK clients over /mcp at once each see only their own progress", T, () =>
  withWsDaemon(everything, async (d) => {
    const peers = [await mcpClient(d, "mcp-a"), await mcpClient(d, "mcp-b")];
    assert.notEqual(peers[0].transport.sessionId, peers[1].transport.sessionId);
    for (const p of peers) await within(10000, "tools/list", p.client.listTools());
    const steps = [5, 3];
    const seen = [[], []];
    const results = await within(30000, "both long-running calls", Promise.all(peers.map((p, i) =>
      p.client.callTool({ name: "trigger-long-running-operation", arguments: { duration: 1, steps: steps[i] } }, undefined, { onprogress: (pr) => seen[i].push([pr.progress, pr.total]), timeout: 30000 }),
    )));
    for (const [i, r] of results.entries()) {
      assert.match(r.content[0].text, new RegExp(`Steps: ${steps[i]}\\.`));
      assert.deepEqual(seen[i], Array.from({ length: steps[i] }, (_, k) => [k + 1, steps[i]]));
      assert.deepEqual(peers[i].errors, []);
    }
  }),
);

test("/mcp refusals: 401, 403 Origin, 406 Accept, 400 without a session, 404 unknown or foreign session, 400 bad MCP-Protocol-Version, DELETE", T, () =>
  withWsDaemon(everything, async (d) => {
    const url = `${d.origin}/mcp`;
    const h = { Authorization: `Bearer ${d.token}`, "Content-Type": "application/json", Accept: "application/json, text/event-stream" };
    const init = { jsonrpc: "2.0", id: 1, method: "initialize", params: { protocolVersion: "2025-11-25", capabilities: {}, clientInfo: { name: "raw", version: "0" } } };
    const post = (headers, body) => fetch(url, { method: "POST", headers, body: JSON.stringify(body) });
    assert.equal((await post({ ...h, Authorization: "" }, init)).status, 401);
    assert.equal((await post({ ...h, Origin: "http://evil.example" }, init)).status, 403);
    assert.equal((await post({ ...h, Accept: "application/json" }, init)).status, 406);
    assert.equal((await post(h, { jsonrpc: "2.0", id: 2, method: "tools/list" })).status, 400);
    assert.equal((await post({ ...h, "MCP-Protocol-Version": "1999-01-01" }, init)).status, 400);
    const r = await post(h, init);
    assert.equal(r.status, 200);
    const sid = r.headers.get("mcp-session-id");
    assert.ok(sid);
    assert.equal((await r.json()).id, 1);
    assert.equal((await post({ ...h, "Mcp-Session-Id": "nope" }, { jsonrpc: "2.0", id: 2, method: "tools/list" })).status, 404);
    assert.equal((await post({ ...h, Authorization: `Bearer ${d.viewerToken}`, "Mcp-Session-Id": sid }, { jsonrpc: "2.0", id: 2, method: "tools/list" })).status, 404);
    assert.equal((await post({ ...h, "Mcp-Session-Id": sid }, { jsonrpc: "2.0", method: "notifications/initialized" })).status, 202);
    // A request is answered as an SSE stream that ends with its response.
    const list = await post({ ...h, "Mcp-Session-Id": sid }, { jsonrpc: "2.0", id: 3, method: "tools/list" });
    assert.equal(list.status, 200);
    assert.match(list.headers.get("content-type"), /text\/event-stream/);
    const text = await within(10000, "the tools/list stream to end", list.text());
    const data = text.split("\n").filter((l) => l.startsWith("data: ")).map((l) => JSON.parse(l.slice(6)));
    assert.equal(data.length, 1, text);
    assert.equal(data[0].id, 3);
    assert.ok(data[0].result.tools.some((t) => t.name === "echo"));
    assert.doesNotMatch(text, /^event:/m);
    assert.equal((await fetch(url, { method: "DELETE", headers: { ...h, "Mcp-Session-Id": sid } })).status, 200);
    assert.equal((await post({ ...h, "Mcp-Session-Id": sid }, { jsonrpc: "2.0", id: 4, method: "tools/list" })).status, 404);
  }),
);

// MCP Streamable HTTP (revision 2025-11-25): the MCP TypeScript SDK's own
// StreamableHTTPClientTransport against agentbridge's /mcp, in front of
// @modelcontextprotocol/server-everything over stdio behind `serve`: list
// tools, call echo, call the long-running operation with progress, list
// resources, two clients at once; raw fetch checks the refusals.
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { CreateMessageRequestSchema, ElicitRequestSchema } from "@modelcontextprotocol/sdk/types.js";
import assert from "node:assert/strict";
import test from "node:test";
import { within } from "./lib/bridge.mjs";
import { withWsDaemon } from "./lib/wspeer.mjs";

const T = { timeout: 90000 };
const everything = { agent: ["node", "node_modules/@modelcontextprotocol/server-everything/dist/index.js", "stdio"] };

async function mcpClient(d, name, token = d.token, { capabilities = {}, fetch: fetchFn, handlers } = {}) {
  const transport = new StreamableHTTPClientTransport(new URL(`${d.origin}/mcp`), {
    requestInit: { headers: { Authorization: `Bearer ${token}` } },
    fetch: fetchFn,
    reconnectionOptions: { initialReconnectionDelay: 200, maxReconnectionDelay: 1000, reconnectionDelayGrowFactor: 1.5, maxRetries: 5 },
  });
  const client = new Client({ name, version: "0.0.0" }, { capabilities });
  for (const [schema, fn] of handlers ?? []) client.setRequestHandler(schema, fn);
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
    // A priming event (an id, empty data) opens the stream, so a client
    // that loses it can resume (Last-Event-ID); then the response.
    assert.match(text, /^id: 1-1\ndata: \n\nid: 1-2\ndata: \{/, text);
    const data = text.split("\n").filter((l) => l.startsWith("data: ") && l.length > 6).map((l) => JSON.parse(l.slice(6)));
    assert.equal(data.length, 1, text);
    assert.equal(data[0].id, 3);
    assert.ok(data[0].result.tools.some((t) => t.name === "echo"));
    assert.doesNotMatch(text, /^event:/m);
    assert.equal((await fetch(url, { method: "DELETE", headers: { ...h, "Mcp-Session-Id": sid } })).status, 200);
    assert.equal((await post({ ...h, "Mcp-Session-Id": sid }, { jsonrpc: "2.0", id: 4, method: "tools/list" })).status, 404);
  }),
);

const sampled = (text) => async () => ({ model: "test-model", role: "assistant", content: { type: "text", text } });

test("sampling and elicitation from the MCP server reach the MCP SDK client and their answers go back", T, () =>
  withWsDaemon(everything, async (d) => {
    const { client } = await mcpClient(d, "mcp-sampling", d.token, {
      capabilities: { sampling: {}, elicitation: {} },
      handlers: [
        [CreateMessageRequestSchema, sampled("sampled over /mcp")],
        [ElicitRequestSchema, async () => ({ action: "accept", content: { name: "Ada Lovelace" } })],
      ],
    });
    const s = await within(15000, "trigger-sampling-request", client.callTool({ name: "trigger-sampling-request", arguments: { prompt: "hi", maxTokens: 5 } }));
    assert.match(s.content[0].text, /sampled over \/mcp/);
    const e = await within(15000, "trigger-elicitation-request", client.callTool({ name: "trigger-elicitation-request", arguments: {} }));
    assert.match(e.content.map((c) => c.text).join("\n"), /Ada Lovelace/);
  }),
);

// Reads SSE events from a fetch body, one at a time.
function sseReader(body) {
  const reader = body.getReader();
  const dec = new TextDecoder();
  let buf = "";
  return async function next() {
    for (;;) {
      const i = buf.indexOf("\n\n");
      if (i >= 0) {
        const block = buf.slice(0, i);
        buf = buf.slice(i + 2);
        const ev = { id: undefined, data: "" };
        for (const line of block.split("\n")) {
          if (line.startsWith("id: ")) ev.id = line.slice(4);
          if (line.startsWith("data: ")) ev.data += line.slice(6);
        }
        return ev;
      }
      const { value, done } = await reader.read();
      if (done) return undefined;
      buf += dec.decode(value, { stream: true });
    }
  };
}

test("a server→client request comes on the POST's SSE stream before its response, with no GET open", T, () =>
  withWsDaemon(everything, async (d) => {
    const url = `${d.origin}/mcp`;
    const h = { Authorization: `Bearer ${d.token}`, "Content-Type": "application/json", Accept: "application/json, text/event-stream" };
    const init = { jsonrpc: "2.0", id: 1, method: "initialize", params: { protocolVersion: "2025-11-25", capabilities: { sampling: {} }, clientInfo: { name: "raw", version: "0" } } };
    const r = await fetch(url, { method: "POST", headers: h, body: JSON.stringify(init) });
    assert.equal(r.status, 200);
    const hs = { ...h, "Mcp-Session-Id": r.headers.get("mcp-session-id"), "MCP-Protocol-Version": "2025-11-25" };
    await r.text();
    assert.equal((await fetch(url, { method: "POST", headers: hs, body: JSON.stringify({ jsonrpc: "2.0", method: "notifications/initialized" }) })).status, 202);
    const call = await fetch(url, { method: "POST", headers: hs, body: JSON.stringify({ jsonrpc: "2.0", id: 2, method: "tools/call", params: { name: "trigger-sampling-request", arguments: { prompt: "raw", maxTokens: 5 } } }) });
    assert.equal(call.status, 200);
    const next = sseReader(call.body);
    assert.deepEqual(await within(5000, "the priming event", next()), { id: "1-1", data: "" });
    const reqEv = await within(10000, "the sampling request", next());
    assert.equal(reqEv.id, "1-2");
    const req = JSON.parse(reqEv.data);
    assert.equal(req.method, "sampling/createMessage");
    const answer = { jsonrpc: "2.0", id: req.id, result: { model: "m", role: "assistant", content: { type: "text", text: "raw answer" } } };
    assert.equal((await fetch(url, { method: "POST", headers: hs, body: JSON.stringify(answer) })).status, 202);
    const respEv = await within(10000, "the tool's response", next());
    const resp = JSON.parse(respEv.data);
    assert.equal(resp.id, 2);
    assert.match(resp.result.content[0].text, /raw answer/);
    assert.equal(await within(5000, "the stream's end", next()), undefined);
  }),
);

test("a server→client request goes to every client-role MCP session and the first answer wins", T, () =>
  withWsDaemon(everything, async (d) => {
    let slowAsked = 0;
    let slowCancelled;
    const cancelled = new Promise((res) => { slowCancelled = res; });
    const a = await mcpClient(d, "mcp-slow", d.token, {
      capabilities: { sampling: {} },
      handlers: [[CreateMessageRequestSchema, async (_req, extra) => {
        slowAsked++;
        await new Promise((res, rej) => {
          const t = setTimeout(res, 3000);
          extra.signal.addEventListener("abort", () => { clearTimeout(t); slowCancelled(); rej(new Error("cancelled")); });
        });
        return { model: "m", role: "assistant", content: { type: "text", text: "from the slow client" } };
      }]],
    });
    const b = await mcpClient(d, "mcp-fast", d.token, { capabilities: { sampling: {} }, handlers: [[CreateMessageRequestSchema, sampled("from the fast client")]] });
    await within(10000, "tools/list", b.client.listTools());
    const r = await within(15000, "the sampling call", a.client.callTool({ name: "trigger-sampling-request", arguments: { prompt: "race", maxTokens: 5 } }));
    assert.match(r.content[0].text, /from the fast client/);
    assert.equal(slowAsked, 1, "the caller's own session was asked too");
    // The loser is told: notifications/cancelled aborts its handler.
    await within(5000, "the slow client's request to be cancelled", cancelled);
  }),
);

test("an MCP SDK client whose POST stream drops mid-call resumes it with Last-Event-ID: every progress once, then the result", T, () =>
  withWsDaemon(everything, async (d) => {
    let cut = 0;
    // Cuts the long-running call's POST stream after its first progress
    // event: the connection is torn down, as a network drop would.
    const cutter = async (url, init) => {
      const res = await fetch(url, init);
      const body = typeof init?.body === "string" ? init.body : "";
      if (cut || init?.method !== "POST" || !body.includes("trigger-long-running-operation")) return res;
      cut = 1;
      const reader = res.body.getReader();
      const dec = new TextDecoder();
      let seen = "";
      let drop = false;
      const stream = new ReadableStream({
        async pull(ctrl) {
          if (drop) {
            await reader.cancel();
            ctrl.error(new Error("cut by the test"));
            return;
          }
          const { value, done } = await reader.read();
          if (done) return ctrl.close();
          ctrl.enqueue(value);
          seen += dec.decode(value, { stream: true });
          if (seen.includes("notifications/progress")) drop = true;
        },
      });
      return new Response(stream, { status: res.status, headers: res.headers });
    };
    const { client } = await mcpClient(d, "mcp-resume", d.token, { fetch: cutter });
    const seen = [];
    const long = await within(30000, "the resumed long-running operation", client.callTool(
      { name: "trigger-long-running-operation", arguments: { duration: 2, steps: 4 } },
      undefined,
      { onprogress: (p) => seen.push(p.progress), timeout: 30000 },
    ));
    assert.equal(cut, 1, "the stream was not cut");
    assert.match(long.content[0].text, /Steps: 4\./);
    assert.deepEqual(seen, [1, 2, 3, 4]);
  }),
);

test("a dropped GET stream resumes with Last-Event-ID: what came meanwhile, nothing twice", T, () =>
  withWsDaemon(everything, async (d) => {
    const url = `${d.origin}/mcp`;
    const h = { Authorization: `Bearer ${d.token}`, "Content-Type": "application/json", Accept: "application/json, text/event-stream" };
    const init = { jsonrpc: "2.0", id: 1, method: "initialize", params: { protocolVersion: "2025-11-25", capabilities: { sampling: {} }, clientInfo: { name: "raw-get", version: "0" } } };
    const r = await fetch(url, { method: "POST", headers: h, body: JSON.stringify(init) });
    const hs = { ...h, "Mcp-Session-Id": r.headers.get("mcp-session-id"), "MCP-Protocol-Version": "2025-11-25" };
    await r.text();
    await fetch(url, { method: "POST", headers: hs, body: JSON.stringify({ jsonrpc: "2.0", method: "notifications/initialized" }) });
    const ctl = new AbortController();
    const get = await fetch(url, { headers: hs, signal: ctl.signal });
    assert.equal(get.status, 200);
    const next = sseReader(get.body);
    // Another session makes the server ask for sampling: with no POST of
    // its own open, this session gets the request on its GET stream.
    const { client } = await mcpClient(d, "mcp-asker", d.token, { capabilities: { sampling: {} }, handlers: [[CreateMessageRequestSchema, sampled("answered by the asker")]] });
    const asked = client.callTool({ name: "trigger-sampling-request", arguments: { prompt: "get", maxTokens: 5 } });
    let reqEv;
    while (!reqEv) {
      const ev = await within(10000, "the sampling request on the GET stream", next());
      assert.ok(ev, "the GET stream ended");
      if (ev.data && JSON.parse(ev.data).method === "sampling/createMessage") reqEv = ev;
    }
    assert.match(reqEv.id, /^0-\d+$/);
    const req = JSON.parse(reqEv.data);
    ctl.abort(); // the GET drops; the asker answers; this session is told
    assert.match((await within(15000, "the asker's call", asked)).content[0].text, /answered by the asker/);
    const again = await fetch(url, { headers: { ...hs, "Last-Event-ID": reqEv.id } });
    assert.equal(again.status, 200);
    const resumed = sseReader(again.body);
    let cancel;
    while (!cancel) {
      const ev = await within(10000, "the cancellation, replayed", resumed());
      assert.ok(ev, "the resumed stream ended");
      const m = JSON.parse(ev.data);
      assert.notEqual(m.method, "sampling/createMessage", "an event before Last-Event-ID came again");
      if (m.method === "notifications/cancelled") cancel = m;
    }
    assert.equal(cancel.params.requestId, req.id);
    const bad = await fetch(url, { headers: { ...hs, "Last-Event-ID": "7-1" } });
    assert.equal(bad.status, 404);
    await bad.text();
  }),
);

// ACP Streamable HTTP (shared/ACP.md A1): the ACP SDK's own HTTP client
// (createHttpStream from @agentclientprotocol/sdk/experimental/http-client)
// runs one script — initialize → session/new → session/prompt with a
// permission — against the SDK's own AcpServer (the reference) and against
// agentbridge's POST/GET/DELETE /acp in front of the same agent turn
// (fixtures/sdk-agent.mjs behind `serve`). Raw fetch checks the status
// codes and header rules the SDK client does not exercise.
import * as acp from "@agentclientprotocol/sdk";
import { createHttpStream } from "@agentclientprotocol/sdk/experimental/http-client";
import { AcpServer } from "@agentclientprotocol/sdk/experimental/server";
import { createNodeHttpHandler } from "@agentclientprotocol/sdk/experimental/node";
import assert from "node:assert/strict";
import http from "node:http";
import path from "node:path";
import test from "node:test";
import WebSocket from "ws";
import { Inbox, LIVE_MS, RawClient, testDir, within } from "./lib/bridge.mjs";
import { plainCapabilities } from "./lib/sdkpeer.mjs";
import { withWsDaemon } from "./lib/wspeer.mjs";
import { makeAgentApp } from "./fixtures/sdk-agent-app.mjs";

const T = { timeout: 60000 };
const sdkAgent = [process.execPath, path.join(testDir, "fixtures", "sdk-agent.mjs")];

/** An SDK client app over createHttpStream(url, opts), answering permissions with "allow". */
function httpClient(url, opts, defer) {
  const events = new Inbox();
  const app = acp
    .client({ name: "agentbridge-node-sdk-http" })
    .onRequest(acp.methods.client.session.requestPermission, async ({ params }) => {
      events.push({ kind: "permission", params });
      return { outcome: { outcome: "selected", optionId: "allow" } };
    })
    .onNotification(acp.methods.client.session.update, ({ params }) => {
      events.push({ kind: "update", params });
    });
  const conn = app.connect(createHttpStream(url, opts));
  conn.closed.then(() => events.close("the SDK connection closed"));
  defer(() => conn.close());
  return { conn, events };
}

/** The one client script both servers must pass. */
async function script(c, cwd) {
  const init = await within(LIVE_MS, "initialize", c.conn.agent.request(acp.methods.agent.initialize, {
    protocolVersion: acp.PROTOCOL_VERSION,
    clientCapabilities: plainCapabilities,
    clientInfo: { name: "agentbridge-node-sdk-http", version: "0.0.0" },
  }));
  assert.equal(init.protocolVersion, acp.PROTOCOL_VERSION);
  assert.equal(init.agentInfo?.name, "sdk-fixture-agent");
  const { sessionId } = await within(10000, "session/new", c.conn.agent.request(acp.methods.agent.session.new, { cwd, mcpServers: [] }));
  assert.equal(typeof sessionId, "string");
  const res = await within(30000, "session/prompt", c.conn.agent.request(acp.methods.agent.session.prompt, { sessionId, prompt: [{ type: "text", text: "over http" }] }));
  assert.equal(res.stopReason, "end_turn");
  const perm = await c.events.waitFor("session/request_permission", (e) => e.kind === "permission");
  assert.equal(perm.params.sessionId, sessionId);
  const callId = perm.params.toolCall.toolCallId;
  const done = await c.events.waitFor(`tool_call_update ${callId}`, (e) => e.kind === "update" && e.params.update.sessionUpdate === "tool_call_update" && e.params.update.toolCallId === callId);
  assert.equal(done.params.update.status, "completed");
  const texts = () => c.events.all.filter((e) => e.kind === "update" && e.params.update.sessionUpdate === "agent_message_chunk").map((e) => e.params.update.content.text);
  await c.events.waitFor("the last chunk", (e) => e.kind === "update" && e.params.update.content?.text === "permission granted");
  assert.deepEqual(texts(), ["sdk agent heard: over http", "permission granted"]);
  for (const e of c.events.all.filter((e) => e.kind === "update")) assert.equal(e.params.sessionId, sessionId);
  return sessionId;
}

test("reference: the SDK http-client script against the SDK's own AcpServer", T, async () => {
  const server = new AcpServer({ createAgent: makeAgentApp });
  const srv = http.createServer(createNodeHttpHandler(server));
  await new Promise((r) => srv.listen(0, "127.0.0.1", r));
  const cleanups = [];
  try {
    const c = httpClient(`http://127.0.0.1:${srv.address().port}/acp`, {}, (f) => cleanups.push(f));
    await script(c, process.cwd());
  } finally {
    for (const f of cleanups) await f();
    await server.close?.();
    srv.closeAllConnections();
    await new Promise((r) => srv.close(r));
  }
});

test("the same script against agentbridge's /acp, token as a Bearer header", T, () =>
  withWsDaemon({ agent: sdkAgent }, async (d) => {
    const c = httpClient(`${d.origin}/acp`, { headers: { Authorization: `Bearer ${d.token}` } }, (f) => d.defer(f));
    await script(c, d.dir);
  }),
);

test("the same script against agentbridge's /acp, token in ?token=", T, () =>
  withWsDaemon({ agent: sdkAgent }, async (d) => {
    const c = httpClient(`${d.origin}/acp?token=${d.token}`, {}, (f) => d.defer(f));
    await script(c, d.dir);
  }),
);

test("the same script against agentbridge's /acp, token in the agentbridge_token cookie", T, () =>
  withWsDaemon({ agent: sdkAgent }, async (d) => {
    const c = httpClient(`${d.origin}/acp`, { headers: { Cookie: `agentbridge_token=${d.token}` } }, (f) => d.defer(f));
    await script(c, d.dir);
  }),
);

/** POST initialize with raw fetch; returns the connection id. */
async function rawInit(d, token = d.token) {
  const r = await fetch(`${d.origin}/acp`, {
    method: "POST",
    headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
    body: JSON.stringify({ jsonrpc: "2.0", id: 1, method: "initialize", params: { protocolVersion: 1, clientCapabilities: plainCapabilities } }),
  });
  assert.equal(r.status, 200, await r.clone().text());
  assert.match(r.headers.get("content-type"), /application\/json/);
  const body = await r.json();
  assert.equal(body.id, 1);
  assert.ok(body.result?.protocolVersion, JSON.stringify(body));
  const id = r.headers.get("acp-connection-id");
  assert.match(id ?? "", /^[0-9a-f-]{36}$/);
  return id;
}

test("status codes and header rules of A1", T, () =>
  withWsDaemon({}, async (d) => {
    const url = `${d.origin}/acp`;
    const auth = { Authorization: `Bearer ${d.token}` };
    const json = { ...auth, "Content-Type": "application/json" };
    const post = (headers, body) => fetch(url, { method: "POST", headers, body: typeof body === "string" ? body : JSON.stringify(body) });
    // No token: 401; wrong Origin: 403.
    assert.equal((await post({ "Content-Type": "application/json" }, { jsonrpc: "2.0", id: 1, method: "initialize", params: {} })).status, 401);
    assert.equal((await post({ ...json, Origin: "http://evil.example" }, { jsonrpc: "2.0", id: 1, method: "initialize", params: {} })).status, 403);
    assert.equal((await fetch(url, { method: "PUT", headers: auth })).status, 405);
    assert.equal((await post({ ...auth, "Content-Type": "text/plain" }, "{}")).status, 415);
    const batch = await post(json, "[]");
    assert.equal(batch.status, 400);
    assert.equal((await batch.json()).error.code, -32600);
    assert.equal((await post(json, "42")).status, 400);
    assert.equal((await post(json, { jsonrpc: "2.0", id: 2, method: "session/new", params: {} })).status, 400); // Missing Acp-Connection-Id
    assert.equal((await post(json, { jsonrpc: "2.0", method: "initialize", params: {} })).status, 400); // no id

    const id = await rawInit(d);
    const withId = { ...json, "Acp-Connection-Id": id };
    assert.equal((await post(withId, { jsonrpc: "2.0", id: 3, method: "initialize", params: {} })).status, 400);
    assert.equal((await post(withId, { jsonrpc: "2.0", id: 4, method: "session/prompt", params: { sessionId: "s", prompt: [] } })).status, 400); // Missing Acp-Session-Id
    assert.equal((await post({ ...withId, "Acp-Session-Id": "t" }, { jsonrpc: "2.0", id: 4, method: "session/prompt", params: { sessionId: "s", prompt: [] } })).status, 400); // Mismatched
    // The id is bound to its token: the viewer's token gets 404 for it.
    assert.equal((await post({ ...withId, Authorization: `Bearer ${d.viewerToken}` }, { jsonrpc: "2.0", method: "x/y" })).status, 404);
    assert.equal((await post({ ...json, "Acp-Connection-Id": "nope" }, { jsonrpc: "2.0", method: "x/y" })).status, 404);
    // GET needs Accept: text/event-stream.
    assert.equal((await fetch(url, { headers: { ...auth, "Acp-Connection-Id": id } })).status, 406);
    // The connection stream: a second GET is 409 unless it carries Last-Event-ID.
    const ac = new AbortController();
    const g1 = await fetch(url, { headers: { ...auth, Accept: "text/event-stream", "Acp-Connection-Id": id }, signal: ac.signal });
    assert.equal(g1.status, 200);
    assert.match(g1.headers.get("content-type"), /text\/event-stream/);
    const g2 = await fetch(url, { headers: { ...auth, Accept: "text/event-stream", "Acp-Connection-Id": id } });
    assert.equal(g2.status, 409);
    // A request's answer arrives on the connection stream.
    assert.equal((await post(withId, { jsonrpc: "2.0", id: 7, method: "session/new", params: { cwd: d.dir, mcpServers: [] } })).status, 202);
    const reader = g1.body.getReader();
    let text = "";
    while (!text.includes('"id":7')) {
      const { value, done } = await within(10000, "the session/new answer on the stream", reader.read());
      assert.ok(!done, "stream ended early");
      text += new TextDecoder().decode(value);
    }
    assert.match(text, /data: \{.*"id":7.*"sessionId"/);
    // DELETE ends it: 202, the stream ends, the id is gone.
    assert.equal((await fetch(url, { method: "DELETE", headers: { ...auth, "Acp-Connection-Id": id } })).status, 202);
    for (;;) {
      const { done } = await within(10000, "the stream to end after DELETE", reader.read());
      if (done) break;
    }
    ac.abort();
    assert.equal((await post(withId, { jsonrpc: "2.0", method: "x/y" })).status, 404);
  }),
);

test("a viewer opens an ACP HTTP connection: initialize is answered from the cache", T, () =>
  withWsDaemon({}, async (d) => {
    await rawInit(d); // the client's initialize fills the cache
    await rawInit(d, d.viewerToken);
  }),
);

test("the WebSocket 101 carries Acp-Connection-Id", T, () =>
  withWsDaemon({}, async (d) => {
    const ws = new WebSocket(d.wsUrl, { headers: { Authorization: `Bearer ${d.token}` } });
    const id = await within(10000, "the upgrade", new Promise((resolve, reject) => {
      ws.on("upgrade", (res) => resolve(res.headers["acp-connection-id"]));
      ws.on("error", reject);
    }));
    ws.close();
    assert.match(id ?? "", /^[0-9a-f-]{36}$/);
  }),
);

test("a POST body sent chunked is read whole", T, () =>
  withWsDaemon({}, async (d) => {
    const body = JSON.stringify({ jsonrpc: "2.0", id: 1, method: "initialize", params: { protocolVersion: 1, clientCapabilities: plainCapabilities } });
    const status = await new Promise((resolve, reject) => {
      const req = http.request(`${d.origin}/acp`, { method: "POST", headers: { Authorization: `Bearer ${d.token}`, "Content-Type": "application/json", "Transfer-Encoding": "chunked" } }, (res) => {
        res.resume();
        resolve(res.statusCode);
      });
      req.on("error", reject);
      req.write(body.slice(0, 10));
      setImmediate(() => req.end(body.slice(10)));
    });
    assert.equal(status, 200);
  }),
);

test("one session watched at once by a Unix-socket client, a WebSocket client and an HTTP client", T, () =>
  withWsDaemon({ agent: sdkAgent }, async (d) => {
    const { WsPeer } = await import("./lib/wspeer.mjs");
    const c = httpClient(`${d.origin}/acp`, { headers: { Authorization: `Bearer ${d.token}` } }, (f) => d.defer(f));
    await within(LIVE_MS, "initialize", c.conn.agent.request(acp.methods.agent.initialize, { protocolVersion: acp.PROTOCOL_VERSION, clientCapabilities: plainCapabilities }));
    const { sessionId } = await within(10000, "session/new", c.conn.agent.request(acp.methods.agent.session.new, { cwd: d.dir, mcpServers: [] }));
    const unix = await RawClient.connect(d);
    await unix.call(1, "bridge/attach", { sessionId });
    const ws = await WsPeer.open(d, d.wsUrl, undefined, { headers: { Authorization: `Bearer ${d.viewerToken}` } });
    ws.request(1, "bridge/attach", { sessionId });
    const att = await ws.response(1);
    assert.equal(att.error, undefined, JSON.stringify(att));
    const res = await within(30000, "session/prompt", c.conn.agent.request(acp.methods.agent.session.prompt, { sessionId, prompt: [{ type: "text", text: "three ways" }] }));
    assert.equal(res.stopReason, "end_turn");
    const last = (m) => m.method === "session/update" && m.params?.sessionId === sessionId && m.params.update?.content?.text === "permission granted";
    await unix.waitFor("the last chunk on the Unix socket", last);
    await ws.waitFor("the last chunk on the WebSocket", last);
    await c.events.waitFor("the last chunk over HTTP", (e) => e.kind === "update" && last({ method: "session/update", params: e.params }));
    for (const seen of [unix.all, ws.all]) {
      assert.ok(seen.some((m) => m.method === "session/update" && m.params.update?.content?.text === "sdk agent heard: three ways"));
    }
  }),
);

test("a session GET with Last-Event-ID takes the stream over and resumes from the session log, events carrying id: SEQ", T, () =>
  withWsDaemon({ agent: sdkAgent }, async (d) => {
    let connId;
    const spy = async (url, init) => {
      const r = await fetch(url, init);
      connId ??= r.headers.get("acp-connection-id") ?? undefined;
      return r;
    };
    const c = httpClient(`${d.origin}/acp`, { headers: { Authorization: `Bearer ${d.token}` }, fetch: spy }, (f) => d.defer(f));
    await script(c, d.dir);
    assert.ok(connId);
    const sessionId = c.events.all.find((e) => e.kind === "update").params.sessionId;
    const ac = new AbortController();
    d.defer(() => ac.abort());
    const headers = { Authorization: `Bearer ${d.token}`, Accept: "text/event-stream", "Acp-Connection-Id": connId, "Acp-Session-Id": sessionId };
    assert.equal((await fetch(`${d.origin}/acp`, { headers })).status, 409);
    const g = await fetch(`${d.origin}/acp`, { headers: { ...headers, "Last-Event-ID": "1" }, signal: ac.signal });
    assert.equal(g.status, 200);
    const reader = g.body.getReader();
    let text = "";
    while (!text.includes("permission granted")) {
      const { value, done } = await within(10000, "the replayed events", reader.read());
      assert.ok(!done, "stream ended early: " + text);
      text += new TextDecoder().decode(value);
    }
    const ids = [...text.matchAll(/^id: (\d+)$/gm)].map((m) => Number(m[1]));
    assert.ok(ids.length >= 3, text);
    assert.ok(ids[0] > 1, `replay starts after Last-Event-ID 1: ${ids}`);
    assert.doesNotMatch(text, /sdk agent heard/, "seq 1 (the first chunk) was not asked for");
  }),
);

test("--http-idle reaps a connection with no GET and no request", T, () =>
  // 3s, not less: initialize and the first POST must both land within
  // --http-idle of each other, and on a loaded machine (make test runs
  // three lanes at once) 1s was once too short for them.
  withWsDaemon({ args: ["--http-idle", "3s"] }, async (d) => {
    const id = await rawInit(d);
    const post = () => fetch(`${d.origin}/acp`, { method: "POST", headers: { Authorization: `Bearer ${d.token}`, "Content-Type": "application/json", "Acp-Connection-Id": id }, body: JSON.stringify({ jsonrpc: "2.0", method: "x/ping" }) });
    assert.equal((await post()).status, 202);
    // Reaping is the passing of time itself: wait past --http-idle plus a
    // sweep, with no GET open and no request.
    await new Promise((r) => setTimeout(r, 4500));
    assert.equal((await post()).status, 404);
  }),
);

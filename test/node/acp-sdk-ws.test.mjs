// The ACP TypeScript SDK's own WebSocket client
// (@agentclientprotocol/sdk/experimental/ws-client, createWebSocketStream)
// against the daemon's GET /acp — the endpoint of ACP's remote-transport
// RFD — driving the built-in demo agent through a whole turn with no shim in
// between.
import * as acp from "@agentclientprotocol/sdk";
import { createWebSocketStream } from "@agentclientprotocol/sdk/experimental/ws-client";
import assert from "node:assert/strict";
import test from "node:test";
import WebSocket from "ws";
import { Inbox, optionOfKind, within } from "./lib/bridge.mjs";
import { plainCapabilities } from "./lib/sdkpeer.mjs";
import { chunkText, withWsDaemon } from "./lib/wspeer.mjs";

const T = { timeout: 60000 };

/**
 * An SDK client app connected over createWebSocketStream(url, streamOpts).
 * Updates and permission requests land in events, as in lib/sdkpeer.mjs.
 */
function wsClient(d, streamOpts, choose = "allow") {
  const events = new Inbox();
  const app = acp
    .client({ name: "agentbridge-node-sdk-ws" })
    .onRequest(acp.methods.client.session.requestPermission, async ({ params }) => {
      events.push({ kind: "permission", params });
      return { outcome: { outcome: "selected", optionId: optionOfKind(params, choose) } };
    })
    .onNotification(acp.methods.client.session.update, ({ params }) => {
      events.push({ kind: "update", params });
    });
  const conn = app.connect(createWebSocketStream(d.wsUrl, { WebSocket, ...streamOpts }));
  conn.closed.then(() => events.close("the SDK connection closed"));
  d.defer(() => conn.close());
  return { conn, events };
}

/** initialize → session/new → session/prompt through the SDK, then checks the turn as the SDK's callbacks saw it. */
async function fullTurn(d, c, text) {
  const init = await within(
    10000,
    "initialize",
    c.conn.agent.request(acp.methods.agent.initialize, {
      protocolVersion: acp.PROTOCOL_VERSION,
      clientCapabilities: plainCapabilities,
      clientInfo: { name: "agentbridge-node-sdk-ws", version: "0.0.0" },
    }),
  );
  assert.equal(init.protocolVersion, acp.PROTOCOL_VERSION);
  assert.equal(init.agentInfo?.name, "agentbridge-demo");
  const { sessionId } = await within(10000, "session/new", c.conn.agent.request(acp.methods.agent.session.new, { cwd: d.dir, mcpServers: [] }));
  assert.equal(typeof sessionId, "string");
  const res = await within(30000, "session/prompt", c.conn.agent.request(acp.methods.agent.session.prompt, { sessionId, prompt: [{ type: "text", text }] }));
  assert.equal(res.stopReason, "end_turn");

  const perm = await c.events.waitFor("session/request_permission", (e) => e.kind === "permission");
  assert.equal(perm.params.sessionId, sessionId);
  const callId = perm.params.toolCall.toolCallId;
  // The SDK may resolve the prompt before its handler for the last update ran.
  const done = await c.events.waitFor(`tool_call_update ${callId}`, (e) => e.kind === "update" && e.params.update.sessionUpdate === "tool_call_update" && e.params.update.toolCallId === callId);
  assert.equal(done.params.update.status, "completed");
  const updates = c.events.all.filter((e) => e.kind === "update");
  for (const u of updates) assert.equal(u.params.sessionId, sessionId);
  assert.ok(updates.some((u) => u.params.update.sessionUpdate === "tool_call" && u.params.update.toolCallId === callId), "no tool_call update");
  const texts = updates.filter((u) => u.params.update.sessionUpdate === "agent_message_chunk").map((u) => u.params.update.content.text);
  assert.deepEqual(
    texts,
    Array.from({ length: 20 }, (_, i) => chunkText(i + 1, 20, 64)),
  );
  return sessionId;
}

test("ACP SDK ws-client with the token in an Authorization header completes a turn", T, () =>
  withWsDaemon({}, async (d) => {
    const c = wsClient(d, { headers: { Authorization: `Bearer ${d.token}` } });
    await fullTurn(d, c, "hello from the SDK over WebSocket");
  }),
);

test("ACP SDK ws-client with the token as a subprotocol (the browser way) completes a turn", T, () =>
  withWsDaemon({}, async (d) => {
    const c = wsClient(d, { protocols: [`agentbridge.token.${d.token}`] });
    await fullTurn(d, c, "hello from the SDK with a subprotocol token");
  }),
);

test("ACP SDK ws-client without a token: the stream fails instead of hanging", T, () =>
  withWsDaemon({}, async (d) => {
    const c = wsClient(d, {});
    const req = c.conn.agent.request(acp.methods.agent.initialize, { protocolVersion: acp.PROTOCOL_VERSION, clientCapabilities: plainCapabilities });
    await assert.rejects(within(10000, "initialize to fail on a refused handshake", req), (e) => {
      // `ws` reports the refusal as "Unexpected server response: 401".
      assert.match(String(e?.message ?? e), /401/);
      return true;
    });
    await within(10000, "the SDK connection to close", c.conn.closed);
  }),
);

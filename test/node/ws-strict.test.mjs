// The daemon's WebSocket endpoint (GET /acp) against npm `ws`, a strict
// RFC 6455 implementation nobody here wrote: auth in each of its four
// places, an ACP turn, large and fragmented messages, ping/pong, the close
// handshake, server heartbeats, and the protocol errors that must close the
// connection with the right status code.
import assert from "node:assert/strict";
import test from "node:test";
import { within } from "./lib/bridge.mjs";
import { chunkText, initializeParams, promptTurn, refusedStatus, WsPeer, withWsDaemon } from "./lib/wspeer.mjs";

const T = { timeout: 60000 };

/** initialize then session/new on p; returns the session id. */
async function openSession(p, d) {
  const init = await p.call("init", "initialize", initializeParams);
  assert.equal(init.protocolVersion, 1);
  const { sessionId } = await p.call("new", "session/new", { cwd: d.dir, mcpServers: [] });
  assert.equal(typeof sessionId, "string");
  return sessionId;
}

/** A string of n bytes (ASCII) whose every 16-byte block names its offset, so a lost, doubled or reordered block shows. */
function marked(n) {
  const parts = [];
  for (let off = 0; off < n; off += 16) parts.push(`<${off.toString(16).padStart(13, "0")}>`.slice(0, Math.min(16, n - off)));
  return parts.join("");
}

test("a token in each of the four places opens /acp", T, () =>
  withWsDaemon({}, async (d) => {
    const places = {
      "Authorization: Bearer": [d.wsUrl, undefined, { headers: { Authorization: `Bearer ${d.token}` } }],
      "subprotocol agentbridge.token.T": [d.wsUrl, [`agentbridge.token.${d.token}`], {}],
      "?token=": [`${d.wsUrl}?token=${d.token}`, undefined, {}],
      "cookie agentbridge_token": [d.wsUrl, undefined, { headers: { Cookie: `theme=dark; agentbridge_token=${d.token}` } }],
    };
    for (const [place, [url, protocols, options]] of Object.entries(places)) {
      const p = await WsPeer.open(d, url, protocols, options).catch((e) => {
        throw new Error(`token as ${place}: ${e.message}`);
      });
      if (protocols) {
        // A browser fails a handshake whose response does not select one of
        // the offered subprotocols; `ws` does the same, but check it here.
        assert.equal(p.ws.protocol, protocols[0], "the server did not select the token subprotocol");
      } else {
        assert.equal(p.ws.protocol, "", `token as ${place}: a subprotocol was selected though none was offered`);
      }
      const init = await p.call(1, "initialize", initializeParams);
      assert.equal(init.protocolVersion, 1, `token as ${place}: initialize`);
      const closed = await p.close(1000);
      assert.equal(closed.code, 1000, `token as ${place}: close`);
    }
  }),
);

test("the daemon's own origin is allowed; a browser origin not allowed gets 403", T, () =>
  withWsDaemon({}, async (d) => {
    const own = await WsPeer.open(d, d.wsUrl, [`agentbridge.token.${d.token}`], { origin: d.origin });
    assert.equal((await own.call(1, "initialize", initializeParams)).protocolVersion, 1);
    await own.close(1000);
    const auth = { headers: { Authorization: `Bearer ${d.token}` } };
    assert.equal(await refusedStatus(d.wsUrl, undefined, { ...auth, origin: "http://evil.example" }), 403);
    // Same host, other port: a different origin.
    assert.equal(await refusedStatus(d.wsUrl, undefined, { ...auth, origin: `http://127.0.0.1:${d.port + 1}` }), 403);
    assert.equal(await refusedStatus(d.wsUrl, [`agentbridge.token.${d.token}`], { origin: "https://attacker.test" }), 403);
  }),
);

test("--allow-origin lets a named origin in and no other", T, () =>
  withWsDaemon({ args: ["--allow-origin", "http://dash.example:8080"] }, async (d) => {
    const p = await WsPeer.open(d, d.wsUrl, [`agentbridge.token.${d.token}`], { origin: "http://dash.example:8080" });
    assert.equal((await p.call(1, "initialize", initializeParams)).protocolVersion, 1);
    await p.close(1000);
    assert.equal(await refusedStatus(d.wsUrl, [`agentbridge.token.${d.token}`], { origin: "http://dash.example:8081" }), 403);
  }),
);

test("no token or a wrong one: 401 before the upgrade", T, () =>
  withWsDaemon({}, async (d) => {
    assert.equal(await refusedStatus(d.wsUrl, undefined, {}), 401, "no token");
    // A token differing in its first character (a random token may itself start with "x").
    const wrong = (d.token[0] === "x" ? "y" : "x") + d.token.slice(1);
    assert.equal(await refusedStatus(d.wsUrl, undefined, { headers: { Authorization: `Bearer ${wrong}` } }), 401, "wrong bearer");
    assert.equal(await refusedStatus(d.wsUrl, [`agentbridge.token.${wrong}`], {}), 401, "wrong subprotocol token");
    assert.equal(await refusedStatus(`${d.wsUrl}?token=${wrong}`, undefined, {}), 401, "wrong query token");
    assert.equal(await refusedStatus(d.wsUrl, undefined, { headers: { Cookie: `agentbridge_token=${wrong}` } }), 401, "wrong cookie");
    // A valid token with a foreign origin is judged on the token first or the
    // origin first; either way it must not open. Without any token it is 401
    // or 403, never an open socket.
    const s = await refusedStatus(d.wsUrl, undefined, { origin: "http://evil.example" });
    assert.ok(s === 401 || s === 403, `no token, foreign origin: HTTP ${s}`);
  }),
);

test("a viewer token connects but may not create a session (-32001)", T, () =>
  withWsDaemon({}, async (d) => {
    const p = await WsPeer.open(d, d.wsUrl, undefined, { headers: { Authorization: `Bearer ${d.viewerToken}` } });
    const hello = await p.call("h", "bridge/hello", {});
    assert.equal(hello.role, "viewer");
    p.request("new", "session/new", { cwd: d.dir, mcpServers: [] });
    const res = await p.response("new");
    assert.equal(res.error?.code, -32001, `session/new as viewer: ${JSON.stringify(res)}`);
    assert.equal((await p.call("s", "bridge/sessions", {})).sessions.length, 0, "the refused session/new reached the agent");
  }),
);

test("an ACP turn over ws: initialize, session/new, prompt with the permission allowed", T, () =>
  withWsDaemon({}, async (d) => {
    const p = await WsPeer.open(d, d.wsUrl, undefined, { headers: { Authorization: `Bearer ${d.token}` } });
    const sessionId = await openSession(p, d);
    const { result, updates, permissions } = await promptTurn(p, "prompt", sessionId, "hello over ws");
    assert.equal(result.stopReason, "end_turn");
    const texts = updates.filter((u) => u.sessionUpdate === "agent_message_chunk").map((u) => u.content.text);
    assert.deepEqual(
      texts,
      Array.from({ length: 20 }, (_, i) => chunkText(i + 1, 20, 64)),
      "the demo agent's 20 chunks, in order",
    );
    assert.equal(permissions.length, 1, "permission requests");
    const callId = permissions[0].params.toolCall.toolCallId;
    const call = updates.find((u) => u.sessionUpdate === "tool_call" && u.toolCallId === callId);
    const done = updates.find((u) => u.sessionUpdate === "tool_call_update" && u.toolCallId === callId);
    assert.ok(call, "no tool_call update");
    assert.equal(done?.status, "completed", `tool_call_update: ${JSON.stringify(done)}`);
    assert.ok(p.all.indexOf(permissions[0]) < p.all.findIndex((m) => m.params?.update === done), "tool_call_update before the permission request");
    // Every message was one JSON-RPC object per text frame.
    assert.equal(p.all.filter((m) => m._invalid !== undefined || m._binary !== undefined).length, 0, "a frame that was not one JSON message");
    assert.equal(p.frames, p.all.length);
  }),
);

test("a 1 MiB prompt is echoed back as one 1 MiB chunk", T, () =>
  withWsDaemon({}, async (d) => {
    const p = await WsPeer.open(d, d.wsUrl, undefined, { headers: { Authorization: `Bearer ${d.token}` } });
    const sessionId = await openSession(p, d);
    const text = marked(1 << 20);
    const { result, updates } = await promptTurn(p, "big", sessionId, "echo:" + text);
    assert.equal(result.stopReason, "end_turn");
    const chunks = updates.filter((u) => u.sessionUpdate === "agent_message_chunk");
    assert.equal(chunks.length, 1, `agent_message_chunk updates: ${chunks.length}; all updates: ${JSON.stringify(updates).slice(0, 500)}`);
    assert.equal(chunks[0].content.text.length, text.length);
    assert.ok(chunks[0].content.text === text, "the echoed 1 MiB differs from what was sent");
  }),
);

test("a message sent in fragments, a ping between them and a code point split across them, is reassembled", T, () =>
  withWsDaemon({}, async (d) => {
    const p = await WsPeer.open(d, d.wsUrl, undefined, { headers: { Authorization: `Bearer ${d.token}` } });
    const sessionId = await openSession(p, d);
    const text = "fragments: h\u00e9llo \u2014 w\u00f6rld \u2713 \u{1F600} " + marked(3000);
    const msg = Buffer.from(JSON.stringify({ jsonrpc: "2.0", id: "frag", method: "session/prompt", params: { sessionId, prompt: [{ type: "text", text: "echo:" + text }] } }));
    // Cut inside multi-byte sequences: the 2nd byte of "é", inside "—", inside the emoji.
    const cuts = [msg.indexOf(Buffer.from("\u00e9")) + 1, msg.indexOf(Buffer.from("\u2014")) + 2, msg.indexOf(Buffer.from("\u{1F600}")) + 3, msg.length - 7];
    for (let i = 1; i < cuts.length; i++) assert.ok(cuts[i - 1] > 0 && cuts[i - 1] < cuts[i], `cut positions ${cuts}`);
    const pong = new Promise((resolve) => p.ws.once("pong", resolve));
    let from = 0;
    for (const [i, cut] of cuts.entries()) {
      p.ws.send(msg.subarray(from, cut), { binary: false, fin: false });
      // A control frame in the middle of a fragmented message (RFC 6455 5.4).
      if (i === 1) p.ws.ping(Buffer.from("mid"));
      from = cut;
    }
    p.ws.send(msg.subarray(from), { binary: false, fin: true });
    const got = await within(10000, "the pong to the ping sent between fragments", pong);
    assert.equal(got.toString(), "mid");
    const res = await p.response("frag", 15000);
    assert.equal(res.result?.stopReason, "end_turn", JSON.stringify(res));
    const chunk = p.all.find((m) => m.method === "session/update" && m.params.update.sessionUpdate === "agent_message_chunk");
    assert.equal(chunk?.params.update.content.text, text);
  }),
);

test("a ping from the client is answered with a pong carrying its payload", T, () =>
  withWsDaemon({}, async (d) => {
    const p = await WsPeer.open(d, d.wsUrl, undefined, { headers: { Authorization: `Bearer ${d.token}` } });
    for (const payload of [Buffer.alloc(0), Buffer.from("are you there?"), Buffer.alloc(125, 0xa5)]) {
      const pong = new Promise((resolve) => p.ws.once("pong", resolve));
      p.ws.ping(payload);
      const got = await within(5000, `a pong to a ${payload.length}-byte ping`, pong);
      assert.ok(got.equals(payload), `pong payload ${got.toString("hex")} != ping payload ${payload.toString("hex")}`);
    }
  }),
);

test("the close handshake: the client's 1000 is echoed and the socket ends cleanly", T, () =>
  withWsDaemon({}, async (d) => {
    const p = await WsPeer.open(d, d.wsUrl, undefined, { headers: { Authorization: `Bearer ${d.token}` } });
    await p.call(1, "initialize", initializeParams);
    // `ws` emits close only once the TCP connection has ended, and waits 30s
    // for the server to end it after the close frames crossed: resolving
    // within 10s means the server echoed the close and then hung up.
    const closed = await p.close(1000, "bye");
    assert.equal(closed.code, 1000, `close code from the server: ${JSON.stringify(closed)}`);
    // The daemon is still serving others.
    const q = await WsPeer.open(d, d.wsUrl, undefined, { headers: { Authorization: `Bearer ${d.token}` } });
    assert.equal((await q.call(1, "initialize", initializeParams)).protocolVersion, 1);
  }),
);

test("server heartbeats: `ws` answers them and stays connected past two intervals", T, () =>
  withWsDaemon({ args: ["--heartbeat", "300ms"] }, async (d) => {
    const p = await WsPeer.open(d, d.wsUrl, undefined, { headers: { Authorization: `Bearer ${d.token}` } });
    const start = Date.now();
    // Four pings span at least three intervals (900ms): past the two-interval
    // silence limit, had `ws`'s automatic pongs not counted.
    await within(10000, "four heartbeat pings", new Promise((resolve) => {
      const check = () => p.pings.length >= 4 && resolve();
      check();
      p.ws.on("ping", check);
    }));
    assert.ok(Date.now() - start >= 600, `four pings came within ${Date.now() - start}ms: not 300ms apart`);
    assert.equal(p.ws.readyState, p.ws.OPEN, `closed: ${JSON.stringify(p.closeInfo)}`);
    assert.equal((await p.call(1, "initialize", initializeParams)).protocolVersion, 1);
  }),
);

test("server heartbeats: a peer that never answers is dropped", T, () =>
  withWsDaemon({ args: ["--heartbeat", "300ms"] }, async (d) => {
    // autoPong: false makes `ws` swallow the pings: a half-open peer.
    const p = await WsPeer.open(d, d.wsUrl, undefined, { headers: { Authorization: `Bearer ${d.token}` }, autoPong: false });
    const start = Date.now();
    const closed = await within(10000, "the daemon to drop the silent peer", p.closed);
    const took = Date.now() - start;
    assert.ok(p.pings.length >= 1, `dropped after ${took}ms without a ping first`);
    assert.ok(took >= 500, `dropped after ${took}ms: before two 300ms intervals of silence`);
    assert.notEqual(closed.code, 1000, `a dropped peer got a normal close: ${JSON.stringify(closed)}`);
  }),
);

test("invalid UTF-8 in a text message closes with 1007", T, () =>
  withWsDaemon({}, async (d) => {
    const p = await WsPeer.open(d, d.wsUrl, undefined, { headers: { Authorization: `Bearer ${d.token}` } });
    // A JSON string with a lone continuation byte and an overlong "/" inside.
    p.ws.send(Buffer.concat([Buffer.from('{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"x":"'), Buffer.from([0x80, 0xc0, 0xaf]), Buffer.from('"}}')]), { binary: false });
    const closed = await within(10000, "the close after invalid UTF-8", p.closed);
    assert.equal(closed.code, 1007, JSON.stringify(closed));
    assert.equal(p.all.length, 0, `answered an invalid message: ${JSON.stringify(p.all)}`);
  }),
);

test("invalid UTF-8 split across fragments closes with 1007", T, () =>
  withWsDaemon({}, async (d) => {
    const p = await WsPeer.open(d, d.wsUrl, undefined, { headers: { Authorization: `Bearer ${d.token}` } });
    // "é" is C3 A9: the first fragment ends with C3, the next starts with a non-continuation byte.
    p.ws.send(Buffer.from([0x7b, 0x22, 0xc3]), { binary: false, fin: false });
    p.ws.send(Buffer.from([0x41, 0x22, 0x7d]), { binary: false, fin: true });
    const closed = await within(10000, "the close after invalid UTF-8 across fragments", p.closed);
    assert.equal(closed.code, 1007, JSON.stringify(closed));
  }),
);

test("an unmasked client frame closes with 1002", T, () =>
  withWsDaemon({}, async (d) => {
    const p = await WsPeer.open(d, d.wsUrl, undefined, { headers: { Authorization: `Bearer ${d.token}` } });
    p.ws.send(JSON.stringify({ jsonrpc: "2.0", id: 1, method: "initialize", params: initializeParams }), { mask: false });
    const closed = await within(10000, "the close after an unmasked frame", p.closed);
    assert.equal(closed.code, 1002, JSON.stringify(closed));
    assert.equal(p.all.length, 0, `answered an unmasked frame: ${JSON.stringify(p.all)}`);
  }),
);

test("a message over --max-message closes with 1009, in one frame or in fragments", T, () =>
  withWsDaemon({ args: ["--max-message", "1024"] }, async (d) => {
    const auth = { headers: { Authorization: `Bearer ${d.token}` } };
    const small = await WsPeer.open(d, d.wsUrl, undefined, auth);
    // Just under the limit still works.
    const init = JSON.stringify({ jsonrpc: "2.0", id: "ok", method: "initialize", params: { ...initializeParams, pad: "" } });
    const padded = init.replace('"pad":""', `"pad":"${"p".repeat(1024 - init.length)}"`);
    assert.equal(Buffer.byteLength(padded), 1024);
    small.ws.send(padded);
    const ok = await small.response("ok");
    assert.equal(ok.result?.protocolVersion, 1, JSON.stringify(ok));

    const big = await WsPeer.open(d, d.wsUrl, undefined, auth);
    big.ws.send(JSON.stringify({ jsonrpc: "2.0", id: 1, method: "initialize", params: { pad: "x".repeat(2000) } }));
    const closed = await within(10000, "the close after an oversized message", big.closed);
    assert.equal(closed.code, 1009, JSON.stringify(closed));

    const frag = await WsPeer.open(d, d.wsUrl, undefined, auth);
    // Each fragment is under the limit; the message is not.
    const msg = Buffer.from(JSON.stringify({ jsonrpc: "2.0", id: 2, method: "initialize", params: { pad: "y".repeat(1500) } }));
    frag.ws.send(msg.subarray(0, 600), { binary: false, fin: false });
    frag.ws.send(msg.subarray(600, 1200), { binary: false, fin: false });
    frag.ws.send(msg.subarray(1200), { binary: false, fin: true });
    const fclosed = await within(10000, "the close after an oversized fragmented message", frag.closed);
    assert.equal(fclosed.code, 1009, JSON.stringify(fclosed));
    assert.equal(frag.all.length, 0, `answered an oversized message: ${JSON.stringify(frag.all)}`);
  }),
);

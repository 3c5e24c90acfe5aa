// The ACP session lifecycle as a plain ACP SDK 2.4.0 client drives it
// (no bridge/* call), against an SDK agent of our own
// (fixtures/sdk-lifecycle-agent.mjs) speaking protocol version 1 or 2,
// through `agentbridge connect` and through the daemon's /acp WebSocket:
// create a session, drop, come back with session/resume and get every
// update of the next prompt; fork and see the fork from its first event;
// list; close; and cancel an in-flight request while another client's
// request with the same id stays pending.
import * as v1 from "@agentclientprotocol/sdk/unstable";
import * as v2 from "@agentclientprotocol/sdk/experimental/v2/unstable";
import { createWebSocketStream } from "@agentclientprotocol/sdk/experimental/ws-client";
import assert from "node:assert/strict";
import test from "node:test";
import WebSocket from "ws";
import { Inbox, LIVE_MS, spawnConnect, within, withDaemon } from "./lib/bridge.mjs";
import { withWsDaemon } from "./lib/wspeer.mjs";

const T = { timeout: 90000 };
const CHUNKS = 5;

/** A plain SDK client app of protocol version `version` over `transport`. */
function lcClient(d, transport, version, name) {
  const acp = version === 2 ? v2 : v1;
  const events = new Inbox();
  let stream, shim;
  if (transport === "connect") {
    shim = spawnConnect(d);
    stream = acp.ndJsonStream(shim.output, shim.input);
  } else {
    stream = createWebSocketStream(d.wsUrl, { WebSocket, headers: { Authorization: `Bearer ${d.token}` } });
  }
  const app = acp
    .client({ name })
    .onRequest(acp.methods.client.session.requestPermission, ({ params }) => ({
      outcome: { outcome: "selected", optionId: params.options[0].optionId },
    }))
    .onNotification(acp.methods.client.session.update, ({ params }) => events.push(params));
  const conn = app.connect(stream);
  conn.closed.then(() => events.close("the SDK connection closed"));
  d.defer(() => conn.close());
  const req = (method, params, opts) => conn.agent.request(method, params, opts);
  return {
    acp,
    events,
    req,
    async close() {
      conn.close();
      if (shim) await shim.close();
    },
    initialize() {
      return version === 2
        ? req("initialize", { protocolVersion: 2, info: { name, version: "0.0.0" }, capabilities: {} })
        : req("initialize", { protocolVersion: 1, clientCapabilities: { fs: { readTextFile: false, writeTextFile: false }, terminal: false }, clientInfo: { name, version: "0.0.0" } });
    },
    newSession(cwd) {
      return req("session/new", version === 2 ? { cwd } : { cwd, mcpServers: [] });
    },
    /** A whole turn: every chunk's text, in order, as the client's callback saw them. */
    async turn(sessionId, text) {
      const isChunk = (p) => p.sessionId === sessionId && p.update.sessionUpdate === "agent_message_chunk";
      const res = await within(20000, `session/prompt ${text}`, req("session/prompt", { sessionId, prompt: [{ type: "text", text }] }));
      if (version === 2) {
        assert.equal(typeof res.messageId, "string", `v2 prompt ack ${JSON.stringify(res)}`);
        await events.waitFor(`state_update idle of ${sessionId}`, (p) => p.sessionId === sessionId && p.update.sessionUpdate === "state_update" && p.update.state === "idle", 20000);
      } else {
        assert.equal(res.stopReason, "end_turn");
      }
      const texts = [];
      for (let i = 1; i <= CHUNKS; i++) {
        const p = await events.waitFor(`chunk ${i} of ${text}`, isChunk, 20000);
        texts.push(p.update.content.text);
      }
      assert.deepEqual(
        texts,
        Array.from({ length: CHUNKS }, (_, i) => `fixture chunk ${i + 1} of ${CHUNKS} (${text})`),
      );
    },
  };
}

const agentCmd = (version) => ["node", "fixtures/sdk-lifecycle-agent.mjs", ...(version === 2 ? ["--v2"] : [])];

for (const version of [1, 2]) {
  for (const transport of ["connect", "ws"]) {
    const run = transport === "ws" ? withWsDaemon : withDaemon;
    test(`v${version} over ${transport}: resume after a drop, fork from its first event, list, close`, T, () =>
      run({ agent: agentCmd(version) }, async (d) => {
        const a = lcClient(d, transport, version, "editor-before-restart");
        const init = await within(LIVE_MS, "initialize", a.initialize());
        assert.equal(init.protocolVersion, version);
        const { sessionId } = await within(10000, "session/new", a.newSession(d.dir));
        await a.turn(sessionId, "one");
        await a.close();

        // The editor restarts and resumes its session with ACP alone.
        const b = lcClient(d, transport, version, "editor-after-restart");
        await within(LIVE_MS, "initialize", b.initialize());
        await within(10000, "session/resume", b.req("session/resume", { sessionId, cwd: d.dir }));
        await b.turn(sessionId, "two");

        // A fork is the caller's from its first event: the agent's update
        // sent before the fork's answer reaches the client.
        const fork = await within(10000, "session/fork", b.req("session/fork", { sessionId, cwd: d.dir }));
        assert.notEqual(fork.sessionId, sessionId);
        const info = await b.events.waitFor("the fork's first event", (p) => p.sessionId === fork.sessionId);
        assert.equal(info.update.sessionUpdate, "session_info_update");
        assert.equal(info.update.title, `fork of ${sessionId}`);
        await b.turn(fork.sessionId, "three");

        const list = await within(10000, "session/list", b.req("session/list", {}));
        assert.deepEqual(list.sessions.map((s) => s.sessionId).sort(), [sessionId, fork.sessionId].sort());

        assert.deepEqual(await within(10000, "session/close", b.req("session/close", { sessionId })), {});
        // No update of the first session reached the fork's stream or the other way round.
        for (const p of b.events.all) assert.ok([sessionId, fork.sessionId].includes(p.sessionId), JSON.stringify(p));
      }),
    );

    test(`v${version} over ${transport}: a cancel reaches only the sender's own request with a colliding id`, T, () =>
      run({ agent: agentCmd(version) }, async (d) => {
        const [c, e] = [lcClient(d, transport, version, "canceller"), lcClient(d, transport, version, "bystander")];
        await within(LIVE_MS, "initialize", Promise.all([c.initialize(), e.initialize()]));
        // Both SDK clients number their requests alike: these two waits share an id.
        const ac = new AbortController();
        const ae = new AbortController();
        const waitC = c.req("_fixture/wait", {}, { cancellationSignal: ac.signal });
        const waitE = e.req("_fixture/wait", {}, { cancellationSignal: ae.signal });
        const settledC = waitC.then(() => "resolved", (err) => err);
        const settledE = waitE.then(() => "resolved", (err) => err);
        // The agent holds both before either cancels.
        for (let n = 0; (await e.req("_fixture/waiting", {})).waiting < 2; n++) {
          assert.ok(n < 200, "the agent never held both waits");
          await new Promise((r) => setImmediate(r));
        }
        ac.abort();
        const errC = await within(10000, "the canceller's request to end", settledC);
        assert.equal(errC.code, -32800, `the cancelled request ended with ${JSON.stringify(errC)}`);
        assert.equal((await e.req("_fixture/waiting", {})).waiting, 1, "the other client's request with the same id was released too");
        ae.abort();
        const errE = await within(10000, "the bystander's request to end", settledE);
        assert.equal(errE.code, -32800);
      }),
    );
  }
}

// The ACP TypeScript SDK as a client of the shared agent: an SDK client app
// speaks NDJSON over the stdio of `agentbridge connect unix:///…`, exactly as
// an editor configured with that command as its agent does, against the
// daemon's built-in demo agent.
import * as acp from "@agentclientprotocol/sdk";
import assert from "node:assert/strict";
import test from "node:test";
import { binPath, deferred, LIVE_MS, optionOfKind, within, withDaemon } from "./lib/bridge.mjs";
import { isUpdate, sdkClient } from "./lib/sdkpeer.mjs";

const T = { timeout: 60000 };

const choose = (prefix) => (params) => ({ outcome: { outcome: "selected", optionId: optionOfKind(params, prefix) } });

/**
 * Checks one finished demo-agent turn as the SDK client saw it: every update
 * is for sessionId, the agent_message_chunk texts are "chunk i of n: …" for
 * i = 1..n in order with none missing, and the tool call named by the
 * permission request ended with status want. Waits (bounded) for the final
 * tool_call_update because the SDK may resolve the prompt's promise before
 * its handler for the last notification has run.
 */
async function checkTurn(c, sessionId, want) {
  const perm = await c.events.waitFor("session/request_permission", (e) => e.kind === "permission");
  assert.equal(perm.params.sessionId, sessionId, "permission request for another session");
  const callId = perm.params.toolCall.toolCallId;
  assert.ok(callId, "permission request without toolCall.toolCallId");
  await c.events.waitFor(`tool_call ${callId}`, isUpdate("tool_call", { toolCallId: callId }));
  const done = await c.events.waitFor(`tool_call_update ${callId}`, isUpdate("tool_call_update", { toolCallId: callId }));
  assert.equal(done.params.update.status, want, `tool call ${callId} status`);
  // The agent waits for the answer before it reports the outcome.
  assert.ok(c.events.all.indexOf(perm) < c.events.all.indexOf(done), "tool_call_update arrived before the permission request");

  const updates = c.events.all.filter((e) => e.kind === "update");
  for (const u of updates) assert.equal(u.params.sessionId, sessionId, `update for a foreign session: ${JSON.stringify(u.params)}`);
  const texts = updates.filter(isUpdate("agent_message_chunk")).map((e) => e.params.update.content.text);
  assert.ok(texts.length > 0, "no agent_message_chunk reached the sessionUpdate callback");
  texts.forEach((t, i) => {
    const m = /^chunk (\d+) of (\d+): /.exec(t);
    assert.ok(m, `chunk ${i} has unexpected text ${JSON.stringify(t)}`);
    assert.equal(Number(m[1]), i + 1, `chunk ${i} out of order: ${JSON.stringify(t)}`);
    assert.equal(Number(m[2]), texts.length, `chunk ${i} says ${m[2]} chunks, ${texts.length} arrived`);
  });
  return { perm, done, chunks: texts.length };
}

test("SDK client through connect: initialize, session/new, prompt with the permission allowed", T, () =>
  withDaemon({}, async (d) => {
    const c = sdkClient(d, { onPermission: choose("allow") });
    const init = await within(LIVE_MS, "initialize", c.initialize());
    assert.equal(init.protocolVersion, acp.PROTOCOL_VERSION);
    const { sessionId } = await within(10000, "session/new", c.newSession(d.dir));
    assert.equal(typeof sessionId, "string");
    const res = await within(30000, "session/prompt", c.prompt(sessionId, "hello from the SDK"));
    assert.equal(res.stopReason, "end_turn");
    await checkTurn(c, sessionId, "completed");
  }),
);

test("SDK client through connect: a rejected permission fails the tool call", T, () =>
  withDaemon({}, async (d) => {
    const c = sdkClient(d, { onPermission: choose("reject") });
    await within(LIVE_MS, "initialize", c.initialize());
    const { sessionId } = await within(10000, "session/new", c.newSession(d.dir));
    const res = await within(30000, "session/prompt", c.prompt(sessionId, "try the tool"));
    assert.equal(res.stopReason, "end_turn");
    const { perm } = await checkTurn(c, sessionId, "failed");
    assert.ok(perm.params.options.some((o) => o.kind.startsWith("allow")), "the request offered no allow option to reject");
  }),
);

test("two SDK clients through two connect processes: concurrent sessions never mix", T, () =>
  withDaemon({}, async (d) => {
    // Both turns stay in flight together: neither client answers its
    // permission request until both requests have arrived.
    const asked = [deferred(), deferred()];
    const both = Promise.all(asked.map((a) => a.promise));
    const clients = [0, 1].map((i) =>
      sdkClient(d, {
        name: `sdk-client-${i}`,
        onPermission: async (params) => {
          asked[i].resolve();
          await within(20000, "both clients' permission requests", both);
          return choose(i === 0 ? "allow" : "reject")(params);
        },
      }),
    );

    const inits = await within(10000, "initialize on both", Promise.all(clients.map((c) => c.initialize())));
    // The agent was initialised once; the second client got the same result.
    assert.deepEqual(inits[1], inits[0]);
    const sessions = await within(10000, "session/new on both", Promise.all(clients.map((c) => c.newSession(d.dir))));
    const ids = sessions.map((s) => s.sessionId);
    assert.notEqual(ids[0], ids[1], "both clients got the same session");

    const results = await within(
      30000,
      "both prompts",
      Promise.all(clients.map((c, i) => c.prompt(ids[i], `prompt of client ${i}`))),
    );
    assert.deepEqual(
      results.map((r) => r.stopReason),
      ["end_turn", "end_turn"],
    );
    const turns = [];
    for (const [i, c] of clients.entries()) turns.push(await checkTurn(c, ids[i], i === 0 ? "completed" : "failed"));
    assert.notEqual(turns[0].perm.params.toolCall.toolCallId, turns[1].perm.params.toolCall.toolCallId);
    for (const [i, c] of clients.entries()) {
      const perms = c.events.all.filter((e) => e.kind === "permission");
      assert.equal(perms.length, 1, `client ${i} got ${perms.length} permission requests`);
    }
  }),
);

test("SDK ActiveSession.readText through connect gets every chunk before the turn's stop", T, () =>
  // A long turn: readText stops at the session/prompt response, so any
  // update the bridge let the response overtake would be missing here.
  withDaemon({ agent: [binPath(), "demo-agent", "--chunks", "2000", "--chunk-size", "200"] }, async (d) => {
    const c = sdkClient(d, { onPermission: choose("allow") });
    await within(LIVE_MS, "initialize", c.initialize());
    const text = await within(60000, "a session's whole turn", (async () => {
      const session = await c.agent.buildSession(d.dir).start();
      try {
        const res = session.prompt("a long answer, please");
        const text = await session.readText();
        assert.equal((await res).stopReason, "end_turn");
        return text;
      } finally {
        session.dispose();
      }
    })());
    const heads = [...text.matchAll(/chunk (\d+) of (\d+): /g)];
    assert.equal(heads.length, 2000, `readText got ${heads.length} of 2000 chunks (${text.length} bytes)`);
    heads.forEach((m, i) => assert.equal(Number(m[1]), i + 1, `chunk ${i + 1} out of order`));
    assert.equal(text.length, 2000 * 200);
  }),
);

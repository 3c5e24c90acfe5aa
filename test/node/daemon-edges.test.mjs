// The edges an editor meets first and last: connecting the moment the
// daemon's socket appears, and ending `agentbridge connect` by closing its
// stdin. Each case is repeated because what it guards against is a race
// that a single try would only sometimes lose.
import * as acp from "@agentclientprotocol/sdk";
import assert from "node:assert/strict";
import net from "node:net";
import test from "node:test";
import { Daemon, spawnConnect, within, withDaemon } from "./lib/bridge.mjs";
import { plainCapabilities } from "./lib/sdkpeer.mjs";

const T = { timeout: 120000 };
const initialize = { protocolVersion: acp.PROTOCOL_VERSION, clientCapabilities: plainCapabilities };

/** Connects to path as soon as it accepts, trying again at once on ENOENT/ECONNREFUSED. */
async function connectAtOnce(d, ms = 15000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const c = await new Promise((resolve) => {
      const s = net.createConnection(d.sock);
      s.once("connect", () => resolve(s));
      s.once("error", () => resolve(null));
    });
    if (c) return c;
    if (d.proc.exitCode !== null) throw new Error(`daemon exited during start (${d.proc.exitCode})`);
    if (Date.now() > deadline) throw new Error(`socket ${d.sock} did not accept within ${ms}ms`);
    await new Promise((r) => setImmediate(r));
  }
}

/** The first NDJSON line from s, parsed. */
function firstMessage(s, ms) {
  return within(
    ms,
    "the answer to initialize",
    new Promise((resolve, reject) => {
      let buf = "";
      s.setEncoding("utf8");
      s.on("data", (chunk) => {
        buf += chunk;
        const i = buf.indexOf("\n");
        if (i >= 0) resolve(JSON.parse(buf.slice(0, i)));
      });
      s.once("close", () => reject(new Error("connection closed before any answer")));
    }),
  );
}

test("a client connecting the moment the socket appears gets initialize answered", T, async () => {
  // An editor may start the daemon and connect right away: the socket
  // accepting means the daemon is there, so initialize must be answered by
  // the agent, not refused with "agent not running (restarting)".
  for (let i = 0; i < 30; i++) {
    const d = new Daemon();
    let failure;
    try {
      const s = await connectAtOnce(d);
      d.defer(() => s.destroy());
      s.write(JSON.stringify({ jsonrpc: "2.0", id: 0, method: "initialize", params: initialize }) + "\n");
      const m = await firstMessage(s, 10000);
      assert.equal(m.id, 0);
      assert.equal(m.error, undefined, `try ${i}: initialize sent as soon as the socket accepted was refused: ${JSON.stringify(m.error)}`);
      assert.equal(m.result?.protocolVersion, acp.PROTOCOL_VERSION);
    } catch (e) {
      failure = e;
    }
    try {
      await d.stop();
    } catch (e) {
      failure ??= e;
    }
    if (failure) {
      failure.message += `\n--- daemon log (tail) ---\n${d.logs().slice(-6000)}`;
      throw failure;
    }
  }
});

test("agentbridge connect exits 0 when the editor closes its stdin", T, () =>
  withDaemon({}, async (d) => {
    for (let i = 0; i < 30; i++) {
      const shim = spawnConnect(d);
      const out = new Promise((resolve) => {
        let buf = "";
        shim.child.stdout.setEncoding("utf8");
        shim.child.stdout.on("data", (chunk) => {
          buf += chunk;
          if (buf.includes("\n")) resolve(JSON.parse(buf.slice(0, buf.indexOf("\n"))));
        });
      });
      shim.child.stdin.write(JSON.stringify({ jsonrpc: "2.0", id: i, method: "initialize", params: initialize }) + "\n");
      const m = await within(10000, "the answer to initialize through connect", out);
      assert.equal(m.id, i);
      assert.ok(m.result, JSON.stringify(m));
      // Closing stdin is how an editor ends its agent: a normal end, status 0.
      const st = await shim.close();
      assert.deepEqual(st, { code: 0, signal: null }, `try ${i}: connect stderr: ${shim.stderr()}`);
    }
  }),
);

// The real ACP agents from npm, behind `agentbridge serve`, as far as they
// go without credentials or network: @zed-industries/claude-agent-acp and
// @zed-industries/codex-acp answer initialize with their real capabilities
// (the bridge caches it for the second client), and their answer to
// session/new (an authentication or internal error without credentials)
// reaches each of two concurrent clients, with that client's own id,
// unchanged.
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import test from "node:test";
import { RawClient, within, withDaemon } from "./lib/bridge.mjs";

const T = { timeout: 120000 };

const agents = [
  {
    name: "claude-agent-acp",
    cmd: ["node", "node_modules/@zed-industries/claude-agent-acp/dist/index.js"],
    info: "@zed-industries/claude-agent-acp",
    version: "0.23.1",
    sessionCapabilities: ["close", "fork", "list", "resume"],
  },
  {
    name: "codex-acp",
    cmd: ["node", "node_modules/@zed-industries/codex-acp/bin/codex-acp.js"],
    info: null, // codex-acp sends no agentInfo
    sessionCapabilities: ["close", "list", "resume"],
  },
];

for (const a of agents) {
  test(`${a.name} behind serve: real capabilities, session/new's answer to the right client, two clients at once`, T, async () => {
    // A home of its own: no credentials, no user config.
    const home = mkdtempSync(path.join(os.tmpdir(), "abhome"));
    mkdirSync(path.join(home, "codex"));
    const env = ["env", "-u", "ANTHROPIC_API_KEY", "-u", "OPENAI_API_KEY", "-u", "CODEX_API_KEY", `HOME=${home}`, `CODEX_HOME=${path.join(home, "codex")}`];
    try {
      await withDaemon({ agent: [...env, ...a.cmd] }, async (d) => {
        const [x, y] = [await RawClient.connect(d), await RawClient.connect(d)];
        const initParams = {
          protocolVersion: 1,
          clientCapabilities: { fs: { readTextFile: false, writeTextFile: false }, terminal: false },
          clientInfo: { name: "agentbridge-real-agents", version: "0.0.0" },
        };
        x.request(0, "initialize", initParams);
        y.request("y-0", "initialize", initParams);
        const [ix, iy] = await within(60000, "both initialize answers", Promise.all([x.response(0, 60000), y.response("y-0", 60000)]));
        assert.equal(ix.error, undefined, JSON.stringify(ix));
        assert.deepEqual(iy.result, ix.result, "the second client did not get the agent's own initialize result");
        const caps = ix.result.agentCapabilities;
        assert.equal(ix.result.protocolVersion, 1);
        assert.deepEqual(Object.keys(caps.sessionCapabilities).sort(), a.sessionCapabilities);
        assert.equal(caps.loadSession, true);
        if (a.info) {
          assert.equal(ix.result.agentInfo.name, a.info);
          assert.equal(ix.result.agentInfo.version, a.version);
        }

        // Both ask for a session at once, under their own ids.
        x.request(1, "session/new", { cwd: home, mcpServers: [] });
        y.request("y-1", "session/new", { cwd: home, mcpServers: [] });
        const [nx, ny] = await within(60000, "both session/new answers", Promise.all([x.response(1, 60000), y.response("y-1", 60000)]));
        for (const [who, m] of [["x", nx], ["y", ny]]) {
          if (m.error) {
            assert.equal(typeof m.error.code, "number", `${who}: ${JSON.stringify(m)}`);
            assert.equal(typeof m.error.message, "string", `${who}: ${JSON.stringify(m)}`);
          } else {
            assert.equal(typeof m.result.sessionId, "string", `${who}: ${JSON.stringify(m)}`);
          }
        }
        // Without credentials the agent refuses both alike; each client got
        // the agent's answer as it was, once.
        if (nx.error && ny.error) {
          assert.equal(nx.error.code, ny.error.code);
          assert.equal(nx.error.message, ny.error.message);
        }
        for (const [c, id] of [[x, 1], [y, "y-1"]]) {
          const answers = c.all.filter((m) => m.method === undefined && JSON.stringify(m.id) === JSON.stringify(id));
          assert.equal(answers.length, 1, `answers to ${JSON.stringify(id)}: ${JSON.stringify(answers)}`);
          assert.equal(c.all.filter((m) => m.method === undefined && ![0, 1, "y-0", "y-1"].includes(m.id)).length, 0, "an answer meant for another client");
        }
        console.log(`${a.name}: session/new answered ${JSON.stringify(nx.error ?? nx.result)}`);
      });
    } finally {
      rmSync(home, { recursive: true, force: true });
    }
  });
}

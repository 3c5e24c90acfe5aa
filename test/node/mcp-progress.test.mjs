// Two MCP TypeScript SDK clients share one MCP server
// (@modelcontextprotocol/server-everything over stdio behind `agentbridge
// serve`), each through its own `agentbridge connect`. The SDK uses the
// request id as the progress token, so both clients' tools/call carry the
// same token; each must see only its own progress, under its own token.
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import assert from "node:assert/strict";
import test from "node:test";
import { binPath, RawClient, within, withDaemon } from "./lib/bridge.mjs";

const T = { timeout: 90000 };

async function mcpClient(d, name) {
  const transport = new StdioClientTransport({ command: binPath(), args: ["connect", d.url], stderr: "pipe" });
  const client = new Client({ name, version: "0.0.0" });
  const errors = [];
  client.onerror = (e) => errors.push(e);
  await within(15000, `${name}: initialize`, client.connect(transport));
  d.defer(() => client.close());
  return { client, errors };
}

test("two MCP SDK clients with colliding progress tokens each see only their own progress", T, () =>
  withDaemon({ agent: ["node", "node_modules/@modelcontextprotocol/server-everything/dist/index.js", "stdio"] }, async (d) => {
    const peers = [await mcpClient(d, "mcp-a"), await mcpClient(d, "mcp-b")];
    // The same calls on both, so both tools/call get the same request id
    // and therefore the same progress token.
    for (const p of peers) {
      const tools = await within(10000, "tools/list", p.client.listTools());
      assert.ok(tools.tools.some((t) => t.name === "trigger-long-running-operation"), "server-everything lost its long-running tool");
    }
    const steps = [5, 3]; // the totals tell the two streams apart
    const seen = [[], []];
    const calls = peers.map((p, i) =>
      p.client.callTool(
        { name: "trigger-long-running-operation", arguments: { duration: 1, steps: steps[i] } },
        undefined,
        { onprogress: (pr) => seen[i].push(pr), timeout: 30000 },
      ),
    );
    const results = await within(30000, "both long-running calls", Promise.all(calls));
    for (const [i, r] of results.entries()) {
      assert.match(r.content[0].text, new RegExp(`Steps: ${steps[i]}\\.`), `client ${i}: ${JSON.stringify(r)}`);
      // The SDK handles notifications a microtask later than responses, so
      // the last step's progress, written just before the answer, may be
      // dropped by the SDK itself (it then reports an unknown token); every
      // other step must arrive once, in order, and only this client's.
      const got = seen[i].map((p) => [p.progress, p.total]);
      const want = Array.from({ length: steps[i] }, (_, k) => [k + 1, steps[i]]);
      assert.ok(
        JSON.stringify(got) === JSON.stringify(want) || JSON.stringify(got) === JSON.stringify(want.slice(0, -1)),
        `client ${i} saw progress ${JSON.stringify(got)}, want ${JSON.stringify(want)}`,
      );
      for (const e of peers[i].errors) {
        assert.match(String(e), new RegExp(`unknown token.*"progress":${steps[i]},"total":${steps[i]}`), `client ${i} reported ${e}`);
      }
    }
  }),
);

test("an MCP cancel reaches only the sender's own request: the other client's call with the same id completes", T, () =>
  withDaemon({ agent: ["node", "node_modules/@modelcontextprotocol/server-everything/dist/index.js", "stdio"] }, async (d) => {
    // a: a raw client, so what the server answers is visible; b: the SDK.
    const a = await RawClient.connect(d);
    await a.call(0, "initialize", { protocolVersion: "2025-06-18", capabilities: {}, clientInfo: { name: "raw-a", version: "0" } });
    a.send({ method: "notifications/initialized" });
    const b = await mcpClient(d, "mcp-b");
    // b's SDK numbers its requests 0 (initialize), 1, ...: its tools/call is 1, like a's.
    const bSeen = [];
    const bCall = b.client.callTool(
      { name: "trigger-long-running-operation", arguments: { duration: 2, steps: 4 } },
      undefined,
      { onprogress: (p) => bSeen.push(p.progress), timeout: 30000 },
    );
    // a's operation is the shorter: it has ended on the server by the time b's completes.
    a.request(1, "tools/call", { name: "trigger-long-running-operation", arguments: { duration: 1, steps: 2 }, _meta: { progressToken: "a-token" } });
    const first = await a.waitFor("a's first progress", (m) => m.method === "notifications/progress", 15000);
    assert.equal(first.params.progressToken, "a-token", "a's progress came back without its own token");
    a.send({ method: "notifications/cancelled", params: { requestId: 1, reason: "the user pressed stop" } });
    const bResult = await within(30000, "b's call", bCall);
    assert.match(bResult.content[0].text, /Steps: 4\./);
    assert.ok(bSeen.length >= 3 && bSeen.every((p, i) => p === i + 1), `b's progress ${JSON.stringify(bSeen)}`);
    // The server dropped a's cancelled request, whose operation ended
    // before b's: no answer to id 1 came before the fence's.
    await a.call(2, "ping", {});
    const answers = a.all.filter((m) => m.method === undefined && m.id === 1);
    assert.deepEqual(answers, [], "a's cancelled request was answered: the cancel did not reach it");
    const late = a.all.filter((m) => m.method === "notifications/progress" && m.params.progressToken !== "a-token");
    assert.deepEqual(late, [], "a got progress under a token not its own");
  }),
);

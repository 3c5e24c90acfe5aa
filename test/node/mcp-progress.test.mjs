// Two MCP TypeScript SDK clients share one MCP server
// (@modelcontextprotocol/server-everything over stdio behind `agentbridge
// serve`), each through its own `agentbridge connect`. The SDK uses the
// request id as the progress token, so both clients' tools/call carry the
// same token; each must see only its own progress, under its own token.
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import assert from "node:assert/strict";
import test from "node:test";
import { binPath, within, withDaemon } from "./lib/bridge.mjs";

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

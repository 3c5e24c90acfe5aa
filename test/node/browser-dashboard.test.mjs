// A real browser as a dashboard: headless Chromium (driven by
// playwright-core) loads a page from a web server of its own — another
// origin than the daemon's — whose script opens ws://127.0.0.1:PORT/acp with
// the token as the subprotocol, runs an ACP turn against the demo agent and
// renders it. Chromium enforces what `ws` only may: the server must select
// the offered subprotocol, and the Origin header is set by the browser, not
// the page.
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync, statSync } from "node:fs";
import http from "node:http";
import os from "node:os";
import path from "node:path";
import { after, before, test } from "node:test";
import { chromium } from "playwright-core";
import { testDir, within } from "./lib/bridge.mjs";
import { chunkText, withWsDaemon } from "./lib/wspeer.mjs";

const T = { timeout: 90000 };
const chromiumPath = process.env.AGENTBRIDGE_CHROMIUM || "/usr/bin/chromium";
const page = readFileSync(path.join(testDir, "fixtures/dashboard.html"));

let browser;
let site; // {server, origin}
const scratch = mkdtempSync(path.join(os.tmpdir(), "abb"));

/** Serves the dashboard page at / on a port of its own; everything else is 404. */
function serveDashboard() {
  const server = http.createServer((req, res) => {
    if (req.method === "GET" && new URL(req.url, "http://x").pathname === "/") {
      res.writeHead(200, { "content-type": "text/html; charset=utf-8", "cache-control": "no-store" });
      res.end(page);
      return;
    }
    res.writeHead(404, { "content-type": "text/plain" });
    res.end("not found\n");
  });
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => resolve({ server, origin: `http://127.0.0.1:${server.address().port}` }));
  });
}

before(async () => {
  site = await serveDashboard();
  browser = await within(
    60000,
    `Chromium (${chromiumPath}) to start`,
    chromium.launch({
      executablePath: chromiumPath,
      headless: true,
      args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
      timeout: 60000,
    }),
  );
});

after(async () => {
  await browser?.close();
  if (site) {
    const closed = new Promise((resolve) => site.server.close(resolve));
    site.server.closeAllConnections();
    await closed;
  }
  rmSync(scratch, { recursive: true, force: true });
});

/**
 * Opens the dashboard against daemon d in a fresh browser context and waits
 * (bounded) for its done marker. Returns the page, its state and what
 * Chromium's network layer said about the WebSocket.
 */
async function runDashboard(d, t, prompt) {
  const ctx = await browser.newContext({ viewport: { width: 1000, height: 900 } });
  d.defer(() => ctx.close());
  const p = await ctx.newPage();
  const consoleLines = [];
  p.on("console", (m) => consoleLines.push(`${m.type()}: ${m.text()}`));
  p.on("pageerror", (e) => consoleLines.push(`pageerror: ${e.message}`));
  const sockets = [];
  p.on("websocket", (ws) => {
    const s = { url: ws.url(), errors: [], sent: 0, received: 0 };
    sockets.push(s);
    ws.on("socketerror", (e) => s.errors.push(String(e)));
    ws.on("framesent", () => s.sent++);
    ws.on("framereceived", () => s.received++);
  });
  const hash = new URLSearchParams({ port: String(d.port), token: d.token, ...(prompt ? { prompt } : {}) });
  await p.goto(`${site.origin}/#${hash}`, { timeout: 15000 });
  try {
    await p.waitForSelector("body[data-done]", { timeout: 30000, state: "attached" });
  } catch (e) {
    throw new Error(`the dashboard did not finish: ${e.message}\nstatus: ${await p.textContent("#status")}\nconsole:\n${consoleLines.join("\n")}`);
  }
  const done = await p.getAttribute("body", "data-done");
  const state = await p.evaluate(() => window.acpState);
  t.diagnostic(`dashboard: ${done} ${JSON.stringify(state)}`);
  return { p, done, state, sockets, consoleLines };
}

test("a dashboard page on another origin (allowed) runs an ACP turn over /acp and renders it", T, (t) =>
  withWsDaemon({ args: ["--allow-origin", site.origin] }, async (d) => {
    const { p, done, state, sockets, consoleLines } = await runDashboard(d, t);
    assert.equal(done, "ok", `dashboard ended ${done}: ${JSON.stringify(state)}\n${consoleLines.join("\n")}`);
    assert.equal(state.protocol, `agentbridge.token.${d.token}`, "the browser saw another selected subprotocol");
    assert.equal(state.agent, "agentbridge-demo");
    assert.equal(state.stopReason, "end_turn");
    assert.equal(state.permissions, 1);

    const chunks = await p.$$eval("#transcript .chunk", (els) => els.map((e) => e.textContent));
    assert.deepEqual(chunks, Array.from({ length: 20 }, (_, i) => chunkText(i + 1, 20, 64)), "the rendered chunks");
    const transcript = await p.textContent("#transcript");
    assert.equal(transcript, chunks.join(""));
    const tools = await p.$$eval("#tools li", (els) => els.map((e) => ({ status: e.dataset.status, text: e.textContent })));
    assert.equal(tools.length, 1, JSON.stringify(tools));
    assert.equal(tools[0].status, "completed", JSON.stringify(tools));
    assert.match(tools[0].text, /^Read demo\/file1\.txt — completed$/);
    assert.match(await p.textContent("#session"), /^sess_/);

    assert.equal(sockets.length, 1, JSON.stringify(sockets));
    assert.deepEqual(sockets[0].errors, []);
    // initialize, session/new, session/prompt and the permission answer.
    assert.equal(sockets[0].sent, 4, `frames the page sent: ${sockets[0].sent}`);

    const shot = path.join(scratch, "dashboard.png");
    await p.screenshot({ path: shot, fullPage: true, timeout: 15000 });
    const png = readFileSync(shot);
    assert.ok(png.subarray(0, 8).equals(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])), "the screenshot is not a PNG");
    assert.ok(statSync(shot).size > 5000, `screenshot of ${statSync(shot).size} bytes: blank?`);
    if (process.env.AGENTBRIDGE_KEEP_SCREENSHOT) {
      const kept = path.join(os.tmpdir(), `agentbridge-dashboard-${process.pid}.png`);
      await p.screenshot({ path: kept, fullPage: true, timeout: 15000 });
      t.diagnostic(`screenshot kept at ${kept}`);
    }
  }),
);

test("a dashboard page whose origin is not allowed never gets an open socket (403)", T, (t) =>
  withWsDaemon({}, async (d) => {
    const { done, state, sockets } = await runDashboard(d, t);
    assert.equal(done, "refused", `dashboard ended ${done}: ${JSON.stringify(state)}`);
    assert.equal(state.opened, false);
    assert.equal(state.errorEvent, true, "no error event on a refused handshake");
    assert.equal(state.close?.code, 1006, `close event: ${JSON.stringify(state.close)}`);
    assert.equal(sockets.length, 1, JSON.stringify(sockets));
    // Chromium's network layer names the HTTP status the page cannot see.
    assert.match(sockets[0].errors.join(" "), /403/, `socket errors: ${JSON.stringify(sockets[0].errors)}`);
    assert.equal(sockets[0].sent, 0);
  }),
);

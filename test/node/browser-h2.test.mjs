// HTTP versions in a real browser (headless Chromium): over TLS the daemon
// speaks HTTP/2, so a page holds more SSE streams than HTTP/1.1's six
// connections per origin and its WebSocket still opens (over HTTP/1.1: the
// daemon offers no WebSocket over HTTP/2); on the plain listener the
// seventh stream waits for a connection, the limit docs/protocol.md names.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before, test } from "node:test";
import { RawClient } from "./lib/bridge.mjs";
import { launchChromium, watchConsole } from "./lib/browser.mjs";
import { initializeParams, withWsDaemon } from "./lib/wspeer.mjs";

const T = { timeout: 120000 };
const STREAMS = 8; // more than HTTP/1.1's six connections per origin
let browser;
const scratch = mkdtempSync(path.join(os.tmpdir(), "abh2"));
const cert = path.join(scratch, "cert.pem");
const key = path.join(scratch, "key.pem");

before(async () => {
  execFileSync("openssl", ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-out", cert,
    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"], { stdio: "ignore" });
  browser = await launchChromium();
});
after(async () => {
  await browser?.close();
  rmSync(scratch, { recursive: true, force: true });
});

/** STREAMS sessions owned by a Unix-socket client. */
async function sessions(d) {
  const c = await RawClient.connect(d);
  d.defer(() => c.close());
  await c.call(1, "initialize", initializeParams);
  const ids = [];
  for (let i = 0; i < STREAMS; i++) ids.push((await c.call(10 + i, "session/new", { cwd: os.tmpdir(), mcpServers: [] })).sessionId);
  return ids;
}

/**
 * Logs a page in at origin (?token= sets the cookie), records the HTTP
 * protocol of every response from Chromium's network layer, and opens an
 * EventSource on /events for each session; resolves with the page.
 */
async function openStreams(d, origin, ids) {
  const ctx = await browser.newContext({ ignoreHTTPSErrors: true });
  d.defer(() => ctx.close());
  const p = await ctx.newPage();
  const consoleLines = watchConsole(p);
  const cdp = await ctx.newCDPSession(p);
  const protocols = new Map(); // url path → protocol
  cdp.on("Network.responseReceived", (e) => protocols.set(new URL(e.response.url).pathname, e.response.protocol));
  await cdp.send("Network.enable");
  const resp = await p.goto(`${origin}/?token=${d.token}`);
  assert.equal(resp.status(), 200, consoleLines.join("\n"));
  await p.evaluate((ids) => {
    window.opened = 0;
    window.streams = ids.map((id) => {
      const es = new EventSource(`/events?session=${encodeURIComponent(id)}`);
      es.onopen = () => window.opened++;
      return es;
    });
  }, ids);
  return { p, protocols, consoleLines };
}

test("over TLS a page holds more than six SSE streams on one HTTP/2 connection, and its WebSocket opens", T, () =>
  withWsDaemon({ args: ["--tls-cert", cert, "--tls-key", key] }, async (d) => {
    const ids = await sessions(d);
    const origin = `https://127.0.0.1:${d.port}`;
    const { p, protocols, consoleLines } = await openStreams(d, origin, ids);
    await p.waitForFunction((n) => window.opened === n, STREAMS, { timeout: 15000 }).catch((e) => {
      throw new Error(`${e.message}\nopened: streams over TLS\n${consoleLines.join("\n")}`);
    });
    assert.equal(protocols.get("/"), "h2", JSON.stringify([...protocols]));
    assert.equal(protocols.get("/events"), "h2", JSON.stringify([...protocols]));
    // A WebSocket from the same page: HTTP/1.1 beside the h2 connection.
    const wsOpen = await p.evaluate(
      (tok) =>
        new Promise((resolve) => {
          const ws = new WebSocket(`wss://${location.host}/acp`, [`agentbridge.token.${tok}`]);
          ws.onopen = () => {
            ws.close();
            resolve("open");
          };
          ws.onerror = () => resolve("error");
        }),
      d.token,
    );
    assert.equal(wsOpen, "open");
    assert.equal(await p.evaluate(() => window.opened), STREAMS, "a stream closed");
  }),
);

test("on the plain listener (HTTP/1.1) a page gets six SSE streams; the seventh waits for a connection", T, () =>
  withWsDaemon({}, async (d) => {
    const ids = await sessions(d);
    const { p, protocols } = await openStreams(d, d.origin, ids);
    await p.waitForFunction(() => window.opened === 6, null, { timeout: 15000 });
    assert.equal(protocols.get("/"), "http/1.1");
    // The other streams stay pending while the six are held: closing one
    // stream frees its connection for the next.
    assert.equal(await p.evaluate(() => window.opened), 6);
    await p.evaluate(() => window.streams[0].close());
    await p.waitForFunction(() => window.opened === 7, null, { timeout: 15000 });
    assert.equal(await p.evaluate(() => window.opened), 7, "the eighth stream opened with six connections held");
  }),
);

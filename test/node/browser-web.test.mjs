// The dashboard the daemon serves at GET /, in real headless Chromium: log
// in, watch a session a Unix-socket client drives, answer its permission
// request from the page, see what a viewer sees, and survive a dropped
// network without showing a chunk twice.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before, test } from "node:test";
import { binPath, RawClient, testDir, within } from "./lib/bridge.mjs";
import { docsScreenshot, launchChromium, tcpProxy, watchConsole } from "./lib/browser.mjs";
import { chunkText, initializeParams, WsPeer, withWsDaemon } from "./lib/wspeer.mjs";

const T = { timeout: 120000 };
let browser;

before(async () => {
  browser = await launchChromium();
});
after(async () => {
  await browser?.close();
});

/** The demo agent with chunks paced so a page sees them stream. */
function agent(chunks, pace = "15ms") {
  return [binPath(), "demo-agent", "--chunks", String(chunks), "--pace", pace];
}

/** A Unix-socket client that owns a new session. */
async function owner(d) {
  const c = await RawClient.connect(d);
  await c.call(1, "initialize", initializeParams);
  const { sessionId } = await c.call(2, "session/new", { cwd: os.tmpdir(), mcpServers: [] });
  return { c, sessionId };
}

async function newPage(d, viewport = { width: 1280, height: 900 }) {
  const ctx = await browser.newContext({ viewport });
  d.defer(() => ctx.close());
  const p = await ctx.newPage();
  const consoleLines = watchConsole(p);
  return { ctx, p, consoleLines };
}

/** Opens sid on the page (a click on its row) and waits until attached. */
async function openSession(p, sid) {
  const row = `#sessions tr[data-session="${sid}"]`;
  await p.waitForSelector(row, { timeout: 10000 });
  await p.click(row);
  await p.waitForFunction((s) => window.agentbridge.attached === s, sid, { timeout: 10000 });
}

/**
 * Waits until the health panel's metrics show name = want. The panel polls
 * every 5 s; within that it must follow a permission request appearing and
 * settling (it used to show pending_agent_requests 0 beside a pending card).
 */
async function metricShows(p, name, want) {
  await p.waitForFunction(
    ([n, w]) => {
      for (const dt of document.querySelectorAll("#metrics dt")) {
        if (dt.textContent === n) return dt.nextElementSibling?.textContent === w;
      }
      return false;
    },
    [name, want],
    { timeout: 2500 },
  );
}

const chunksOf = (p) => p.$$eval("#stream .msg.agent .chunk", (els) => els.map((e) => e.textContent));

test("log in with the form; the page streams a session and an operator approves its permission request", T, (t) =>
  withWsDaemon({ agent: agent(30) }, async (d) => {
    const { c, sessionId } = await owner(d);
    const { ctx, p, consoleLines } = await newPage(d);
    const resp = await p.goto(`${d.origin}/`);
    assert.equal(resp.status(), 200);
    assert.match(resp.headers()["content-security-policy"], /script-src 'self';/);
    await p.fill("#token", d.operatorToken);
    const [login] = await Promise.all([p.waitForResponse((r) => r.url() === `${d.origin}/login`), p.click("button[type=submit]")]);
    assert.equal(login.status(), 303);
    await p.waitForFunction(() => window.agentbridge?.connected, null, { timeout: 10000 });
    const cookie = (await ctx.cookies()).find((k) => k.name === "agentbridge_token");
    assert.ok(cookie, "no agentbridge_token cookie after logging in");
    assert.equal(cookie.httpOnly, true);
    assert.equal(cookie.sameSite, "Strict");
    assert.equal(await p.evaluate(() => document.cookie), "", "the page's script can read the token cookie");
    await p.waitForFunction(() => window.agentbridge?.connected, null, { timeout: 10000 });
    assert.equal(await p.textContent("#role"), "operator");
    await openSession(p, sessionId);
    assert.equal(await p.textContent(`#sessions tr[data-session="${sessionId}"] .owner`), "connected");

    // The owner prompts and ignores the permission request.
    c.request(3, "session/prompt", { sessionId, prompt: [{ type: "text", text: "hello from the socket" }] });
    const ask = await c.waitFor("the permission request at the owner", (m) => m.method === "session/request_permission", 20000);
    const card = `#permissions .perm[data-id="${ask.id}"]`;
    await p.waitForSelector(`${card} button[data-kind="allow_once"]`, { timeout: 10000 });
    assert.equal(await p.textContent("#session-status"), "awaiting_hitl");
    const expected = Array.from({ length: 30 }, (_, i) => chunkText(i + 1, 30, 64));
    assert.deepEqual(await chunksOf(p), expected, "the streamed text on the page");
    await metricShows(p, "pending_agent_requests", "1");
    const shot = docsScreenshot("dashboard.png");
    if (shot) await p.screenshot({ path: shot, fullPage: false });

    await p.click(`${card} button[data-kind="allow_once"]`);
    await metricShows(p, "pending_agent_requests", "0");
    const done = await c.response(3, 20000);
    assert.equal(done.result?.stopReason, "end_turn", JSON.stringify(done));
    await c.waitFor("bridge/resolved at the owner", (m) => m.method === "bridge/resolved" && m.params.id === ask.id);
    await p.waitForSelector('#stream .tool[data-status="completed"]', { timeout: 10000 });
    assert.equal(await p.textContent("#stream .tool"), "Read demo/file1.txt — completed");
    assert.equal(await p.getAttribute(card, "data-state"), "answered");

    // Raw JSON view and the health panel (the cookie opens /metrics too).
    await p.check("#show-raw");
    assert.match(await p.textContent("#raw"), /"sessionUpdate":"agent_message_chunk"/);
    await p.waitForFunction(() => document.querySelector("#metrics dt") !== null, null, { timeout: 15000 });
    assert.match(await p.textContent("#health"), /statusok/);
    assert.deepEqual(consoleLines.filter((l) => l.startsWith("pageerror")), []);
  }),
);

test("a viewer's page has no buttons (phone width); a forged answer from a viewer's socket gets -32001", T, (t) =>
  withWsDaemon({ agent: agent(5, "0s") }, async (d) => {
    const { c, sessionId } = await owner(d);
    const { p } = await newPage(d, { width: 390, height: 844 });
    // ?token= once, then a clean URL.
    const resp = await p.goto(`${d.origin}/?token=${d.viewerToken}`);
    assert.equal(resp.status(), 200);
    assert.equal(p.url(), `${d.origin}/`, "the token stayed in the URL");
    await p.waitForFunction(() => window.agentbridge?.connected, null, { timeout: 10000 });
    assert.equal(await p.textContent("#role"), "viewer");
    await openSession(p, sessionId);
    c.request(3, "session/prompt", { sessionId, prompt: [{ type: "text", text: "hi" }] });
    const ask = await c.waitFor("the permission request", (m) => m.method === "session/request_permission", 20000);
    const card = `#permissions .perm[data-id="${ask.id}"]`;
    await p.waitForSelector(card, { timeout: 10000 });
    assert.equal(await p.$$eval("#permissions button", (b) => b.length), 0, "a viewer's page shows answer buttons");
    assert.equal(await p.isVisible("#cancel"), false, "a viewer's page shows Cancel");
    assert.equal(await p.isVisible("#terminal-link"), false);
    const overflow = await p.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 0, `the page is ${overflow}px wider than a phone`);

    const forger = await WsPeer.open(d, d.wsUrl, [`agentbridge.token.${d.viewerToken}`]);
    await forger.call(1, "bridge/attach", { sessionId });
    forger.send({ id: ask.id, result: { outcome: { outcome: "selected", optionId: "allow" } } });
    const refused = await forger.response(ask.id);
    assert.equal(refused.error?.code, -32001, JSON.stringify(refused));

    c.send({ id: ask.id, result: { outcome: { outcome: "selected", optionId: "reject" } } });
    const done = await c.response(3, 20000);
    assert.equal(done.result?.stopReason, "end_turn");
    await p.waitForSelector('#stream .tool[data-status="failed"]', { timeout: 10000 });
    await p.waitForSelector(`${card}[data-state="resolved"]`, { timeout: 10000 });
    const shot = docsScreenshot("dashboard-phone.png");
    if (shot) await p.screenshot({ path: shot, fullPage: false });
  }),
);

test("the page's WebSocket drops mid-stream; it resumes with bridge/attach {since} and shows every chunk once", T, (t) =>
  // 80 chunks over ~4.8 s: the page must still be mid-stream when it has
  // seen 15 (a loaded machine delays the page more than the agent, and
  // the agent sends late chunks at once to keep its schedule).
  withWsDaemon({ agent: agent(80, "60ms") }, async (d) => {
    const proxy = await tcpProxy(d.port);
    d.defer(() => proxy.close());
    const origin = `http://127.0.0.1:${proxy.port}`; // the page's own origin: the proxy's
    const { c, sessionId } = await owner(d);
    const { p, consoleLines } = await newPage(d);
    await p.goto(`${origin}/?token=${d.token}`);
    await p.waitForFunction(() => window.agentbridge?.connected, null, { timeout: 10000 });
    assert.equal(await p.textContent("#role"), "client");
    await openSession(p, sessionId);

    c.request(3, "session/prompt", { sessionId, prompt: [{ type: "text", text: "stream" }] });
    await p.waitForFunction(() => document.querySelectorAll("#stream .msg.agent .chunk").length >= 15, null, { timeout: 20000 });
    const before = (await chunksOf(p)).length;
    assert.ok(proxy.dropAll() > 0, "no connection to drop");
    await p.waitForFunction(() => window.agentbridge.connections >= 2 && window.agentbridge.attached !== null, null, { timeout: 20000 });
    const ask = await c.waitFor("the permission request", (m) => m.method === "session/request_permission", 30000);
    c.send({ id: ask.id, result: { outcome: { outcome: "selected", optionId: "allow" } } });
    assert.equal((await c.response(3, 20000)).result?.stopReason, "end_turn");
    await p.waitForSelector('#stream .tool[data-status="completed"]', { timeout: 15000 });

    const expected = Array.from({ length: 80 }, (_, i) => chunkText(i + 1, 80, 64));
    const got = await chunksOf(p);
    assert.ok(before < 80, `the drop came after the stream ended (${before} chunks)`);
    assert.deepEqual(got, expected, `chunks after the drop (duplicates seen: ${await p.evaluate(() => window.agentbridge.duplicates)})\n${consoleLines.join("\n")}`);
    const s = await p.evaluate(() => window.agentbridge);
    assert.equal(s.duplicates, 0, "the server re-sent events the page had");
    assert.equal(s.gaps, 0);
    t.diagnostic(`dropped after ${before} chunks; reconnected ${s.connections - 1} time(s)`);
  }),
);

test("down longer than the session log holds: the page shows the gap, then every later chunk once", T, (t) =>
  withWsDaemon({ agent: agent(90, "20ms"), args: ["--replay", "12"] }, async (d) => {
    const proxy = await tcpProxy(d.port);
    d.defer(() => proxy.close());
    const origin = `http://127.0.0.1:${proxy.port}`;
    const { c, sessionId } = await owner(d);
    const { p, consoleLines } = await newPage(d);
    await p.goto(`${origin}/?token=${d.operatorToken}`);
    await p.waitForFunction(() => window.agentbridge?.connected, null, { timeout: 10000 });
    await openSession(p, sessionId);
    const chunksAtOwner = () => c.all.filter((m) => m.method === "session/update" && m.params.update.sessionUpdate === "agent_message_chunk").length;
    c.request(3, "session/prompt", { sessionId, prompt: [{ type: "text", text: "stream" }] });
    await p.waitForFunction(() => document.querySelectorAll("#stream .msg.agent .chunk").length >= 10, null, { timeout: 20000 });
    proxy.hold();
    proxy.dropAll();
    const seen = (await chunksOf(p)).length;
    // Stay down while more than the log's 12 events go by.
    await within(30000, "30 more chunks at the owner", new Promise((resolve) => {
      const check = () => (chunksAtOwner() >= seen + 30 ? resolve() : setTimeout(check, 20));
      check();
    }));
    proxy.release();
    await p.waitForFunction(() => window.agentbridge.connections >= 2 && window.agentbridge.attached !== null, null, { timeout: 20000 });
    const ask = await c.waitFor("the permission request", (m) => m.method === "session/request_permission", 30000);
    await p.waitForSelector(`#permissions .perm[data-id="${ask.id}"] button[data-kind="allow_once"]`, { timeout: 10000 });
    await p.click(`#permissions .perm[data-id="${ask.id}"] button[data-kind="allow_once"]`);
    assert.equal((await c.response(3, 20000)).result?.stopReason, "end_turn");
    await p.waitForSelector('#stream .tool[data-status="completed"]', { timeout: 15000 });

    const s = await p.evaluate(() => window.agentbridge);
    assert.equal(s.gaps, 1, `gaps: ${s.gaps}\n${consoleLines.join("\n")}`);
    assert.equal(s.duplicates, 0);
    const gap = await p.textContent("#stream .note.gap");
    const m = /events (\d+)–(\d+) were not delivered/.exec(gap);
    assert.ok(m, `gap note: ${gap}`);
    // The page shows chunks 1..k, the gap, then k'..90: each once, in order.
    const expected = Array.from({ length: 90 }, (_, i) => chunkText(i + 1, 90, 64));
    const got = await chunksOf(p);
    const k = got.findIndex((x, i) => x !== expected[i]);
    assert.ok(k >= seen, `the page lost chunks it had shown: ${k} < ${seen}`);
    const rest = got.slice(k);
    const from = expected.indexOf(rest[0]);
    assert.ok(from > k, `after the gap the page shows ${JSON.stringify(rest[0])}`);
    assert.deepEqual(rest, expected.slice(from), "the chunks after the gap");
    t.diagnostic(`shown ${k} chunks, gap "${gap}", then chunks ${from + 1}..90`);
  }),
);

test("thoughts, plans and a tool call's status updates render; an operator's Cancel ends the owner's turn", T, (t) =>
  withWsDaemon({ agent: ["node", path.join(testDir, "fixtures/rich-agent.mjs")] }, async (d) => {
    const { c, sessionId } = await owner(d);
    const { p, consoleLines } = await newPage(d);
    await p.goto(`${d.origin}/?token=${d.operatorToken}`);
    await p.waitForFunction(() => window.agentbridge?.connected, null, { timeout: 10000 });
    await openSession(p, sessionId);

    c.request(3, "session/prompt", { sessionId, prompt: [{ type: "text", text: "notes" }] });
    assert.equal((await c.response(3, 20000)).result?.stopReason, "end_turn");
    await p.waitForSelector('#stream .tool[data-status="completed"]', { timeout: 10000 });
    assert.equal(await p.textContent("#stream .msg.thought"), "Thinking about notes");
    assert.deepEqual(await p.$$eval("#plan li", (els) => els.map((e) => [e.textContent, e.dataset.status])), [
      ["Read the file (completed)", "completed"],
      ["Summarise it (in_progress)", "in_progress"],
    ]);
    assert.equal(await p.textContent("#stream .msg.agent"), "Here is the answer.");
    assert.equal(await p.textContent("#stream .tool"), "Read notes.txt — completed");
    assert.equal(await p.$$eval("#stream .tool", (e) => e.length), 1, "a tool call's updates made new entries");

    c.request(4, "session/prompt", { sessionId, prompt: [{ type: "text", text: "wait" }] });
    await p.waitForFunction(() => document.querySelector("#stream").textContent.includes("waiting to be cancelled"), null, { timeout: 10000 });
    await p.click("#cancel");
    assert.equal((await c.response(4, 20000)).result?.stopReason, "cancelled", "the operator's Cancel did not end the turn");
    assert.deepEqual(consoleLines.filter((l) => l.startsWith("pageerror")), []);
  }),
);

// The browser terminal (serve --terminal CMD) in real headless Chromium with
// the vendored xterm.js: type and read back from the xterm DOM, resize the
// PTY, roles (viewer 403, operator read-only), a stalled watcher that must
// not slow the writer, and re-attaching after the tab closed.
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before, test } from "node:test";
import WebSocket from "ws";
import { within } from "./lib/bridge.mjs";
import { docsScreenshot, launchChromium, watchConsole } from "./lib/browser.mjs";
import { refusedStatus, withWsDaemon } from "./lib/wspeer.mjs";

const T = { timeout: 180000 };
const SHELL = ["--terminal", "/bin/bash --norc --noprofile", "--terminal-linger", "2m"];
let browser;

before(async () => {
  browser = await launchChromium();
});
after(async () => {
  await browser?.close();
});

/** Opens /terminal with token (?token= once) in a fresh context and waits for the hello. */
async function openTerminal(d, token, { ctx, viewport = { width: 1000, height: 640 } } = {}) {
  ctx ??= await browser.newContext({ viewport });
  d.defer(() => ctx.close().catch(() => {}));
  const p = await ctx.newPage();
  const consoleLines = watchConsole(p);
  await p.goto(`${d.origin}/terminal?token=${token}`);
  assert.equal(p.url(), `${d.origin}/terminal`, "the token stayed in the URL");
  try {
    await p.waitForFunction(() => window.agentbridgeTerm?.state.mode, null, { timeout: 15000 });
  } catch (e) {
    throw new Error(`no hello from /terminal: ${e.message}\n${consoleLines.join("\n")}`);
  }
  return { ctx, p, consoleLines };
}

/** The xterm screen's rows as text. */
function rows(p) {
  return p.$$eval(".xterm-rows > div", (els) => els.map((e) => e.textContent.replace(/\u00a0/g, " ").trimEnd()));
}

/** Waits until a row of the xterm screen is exactly text (or contains it). */
async function waitRow(p, text, { exact = true, ms = 20000 } = {}) {
  try {
    await p.waitForFunction(
      ([want, whole]) =>
        [...document.querySelectorAll(".xterm-rows > div")].some((e) => {
          const r = e.textContent.replace(/\u00a0/g, " ").trimEnd();
          return whole ? r === want : r.includes(want);
        }),
      [text, exact],
      { timeout: ms, polling: 50 },
    );
  } catch (e) {
    throw new Error(`no row ${exact ? "equal to" : "containing"} ${JSON.stringify(text)}: ${e.message}\nscreen:\n${(await rows(p)).join("\n")}`);
  }
}

async function typeLine(p, line) {
  await p.click("#term");
  await p.keyboard.type(line);
  await p.keyboard.press("Enter");
}

test("type `echo hi` and read hi from the xterm DOM; a resize reaches the PTY (stty size)", T, (t) =>
  withWsDaemon({ args: SHELL }, async (d) => {
    const { p } = await openTerminal(d, d.token);
    assert.equal(await p.evaluate(() => window.agentbridgeTerm.state.mode), "write");
    await typeLine(p, "echo hi");
    await waitRow(p, "hi");

    await p.setViewportSize({ width: 760, height: 420 });
    await p.waitForFunction(() => window.agentbridgeTerm.term.cols < 90, null, { timeout: 10000 });
    const { cols, rows: r } = await p.evaluate(() => ({ cols: window.agentbridgeTerm.term.cols, rows: window.agentbridgeTerm.term.rows }));
    await typeLine(p, "stty size");
    await waitRow(p, `${r} ${cols}`);
    t.diagnostic(`the PTY is ${cols}x${r}`);

    // A screenshot for the README: some colour and a listing.
    await p.setViewportSize({ width: 1000, height: 640 });
    await typeLine(p, "cd /usr && clear && printf '\\033[1;32mok\\033[0m a shell in %s, shared through agentbridge\\n' \"$PWD\" && ls --color=always -F && echo listing-done");
    await waitRow(p, "listing-done");
    const shot = docsScreenshot("terminal.png");
    if (shot) await p.screenshot({ path: shot });
  }),
);

/** The audit log's records once pred holds for them (bounded: the log is written asynchronously). */
async function auditRecords(file, pred, what) {
  const deadline = Date.now() + 10000;
  for (;;) {
    const recs = existsSync(file) ? readFileSync(file, "utf8").trim().split("\n").filter(Boolean).map((l) => JSON.parse(l)) : [];
    if (pred(recs)) return recs;
    if (Date.now() > deadline) throw new Error(`audit log: no ${what} within 10s; records: ${JSON.stringify(recs)}`);
    await new Promise((r) => setTimeout(r, 50)); // the writer goroutine appends when its queue empties
  }
}

test("a viewer gets 403; an operator watches read-only; the audit log has every open, watch and close", T, (t) => {
  const scratch = mkdtempSync(path.join(os.tmpdir(), "abaudit"));
  const auditFile = path.join(scratch, "audit.jsonl");
  t.after(() => rmSync(scratch, { recursive: true, force: true }));
  return withWsDaemon({ args: [...SHELL, "--audit", auditFile] }, async (d) => {
    const viewer = await browser.newContext();
    d.defer(() => viewer.close());
    const vp = await viewer.newPage();
    const resp = await vp.goto(`${d.origin}/terminal?token=${d.viewerToken}`);
    assert.equal(resp.status(), 403, "the viewer's terminal page");
    const wsUrl = `ws://127.0.0.1:${d.port}/terminal`;
    assert.equal(await refusedStatus(wsUrl, [`agentbridge.token.${d.viewerToken}`]), 403, "the viewer's WebSocket");
    assert.equal(await refusedStatus(wsUrl, [`agentbridge.token.${d.operatorToken}`]), 404, "an operator with no terminal to watch");

    const { p: w } = await openTerminal(d, d.token);
    await typeLine(w, "echo written-by-the-client");
    await waitRow(w, "written-by-the-client");
    const { p: o } = await openTerminal(d, d.operatorToken);
    assert.equal(await o.evaluate(() => window.agentbridgeTerm.state.mode), "watch");
    await waitRow(o, "written-by-the-client"); // the screen, from the scrollback
    await typeLine(o, "echo forged-by-the-operator");
    await typeLine(w, "echo after-the-operator-typed");
    await waitRow(o, "after-the-operator-typed");
    for (const page of [w, o]) {
      assert.ok(!(await rows(page)).some((r) => r.includes("forged-by-the-operator")), "the operator's keystrokes reached the shell");
    }
    await o.close();
    await w.close();
    const recs = await auditRecords(auditFile, (rs) => rs.filter((r) => r.method === "terminal/close").length >= 2, "two terminal/close records");
    const find = (method, role, outcome) => recs.find((r) => r.method === method && r.role === role && (!outcome || r.outcome === outcome));
    assert.ok(find("terminal/open", "viewer", "denied"), "the viewer's refusal");
    assert.ok(find("terminal/open", "client", "opened"), "the client's open");
    assert.ok(find("terminal/watch", "operator", "opened"), "the operator's watch");
    assert.match(find("terminal/close", "client")?.detail ?? "", /^bytes in [1-9]\d*, out [1-9]\d*/, "the writer's close with its bytes");
    assert.match(find("terminal/close", "operator")?.detail ?? "", /^bytes out [1-9]\d*, refused input \d+/, "the watcher's close with its bytes");
    const text = readFileSync(auditFile, "utf8");
    for (const tok of [d.token, d.operatorToken, d.viewerToken]) assert.ok(!text.includes(tok), "a token in the audit log");
  });
});

/** Runs a command in the writer page and returns how long until its end marker showed. */
async function timed(p, cmd, marker) {
  const t0 = Date.now();
  await typeLine(p, `${cmd}; echo ${marker.slice(0, 4)}''${marker.slice(4)}`);
  await waitRow(p, marker, { ms: 120000 });
  return Date.now() - t0;
}

test("a stalled watcher does not slow the writer: it is degraded to snapshots and catches up by one", T, (t) =>
  withWsDaemon({ args: SHELL }, async (d) => {
    const { p } = await openTerminal(d, d.token);
    const cmd = "seq 1 1200000"; // about 8.5 MB, more than the kernel buffers a stalled reader can hide
    await timed(p, "seq 1 300000", "END-WARMUP"); // xterm fills its scrollback once; both timed runs then start equal
    const baseline = await timed(p, cmd, "END-BASELINE");

    const watcher = new WebSocket(`ws://127.0.0.1:${d.port}/terminal`, [`agentbridge.token.${d.operatorToken}`]);
    d.defer(() => watcher.terminate());
    const texts = [];
    let bytes = 0;
    let tail = "";
    let onText = () => {};
    watcher.on("message", (data, isBinary) => {
      if (isBinary) {
        bytes += data.length;
        tail = (tail + data.toString("latin1")).slice(-8192);
      } else {
        texts.push(JSON.parse(data.toString()));
        onText();
      }
    });
    await within(10000, "the watcher's hello", new Promise((resolve) => (onText = () => texts.some((m) => m.type === "hello") && resolve())));
    watcher._socket.pause(); // stalled: reads nothing from now on

    const stalled = await timed(p, cmd, "END-STALLED");
    t.diagnostic(`writer: ${cmd} took ${baseline} ms alone, ${stalled} ms with a stalled watcher`);
    assert.ok(stalled < baseline * 3 + 3000, `the writer slowed from ${baseline} ms to ${stalled} ms with a stalled watcher`);
    assert.match(d.logs(), /terminal watcher degraded to snapshots/, `the watcher was never degraded (it got ${bytes} bytes; notices ${JSON.stringify(texts)})`);

    // The watcher reads again: the degraded notice, then a snapshot of the
    // screen with the end marker, then live.
    const live = new Promise((resolve) => (onText = () => texts.some((m) => m.type === "live") && resolve()));
    watcher._socket.resume();
    await within(30000, `the watcher to be live again (notices so far ${JSON.stringify(texts)}, ${bytes} bytes)`, live);
    assert.ok(texts.some((m) => m.type === "degraded"), JSON.stringify(texts));
    assert.match(tail, /\x1b\[H\x1b\[2J[\s\S]*END-STALLED/, `the snapshot the watcher got lacks the end of the output: ${JSON.stringify(tail.slice(-600))}`);
    t.diagnostic(`the stalled watcher got ${bytes} bytes of the 8.5 MB the writer saw meanwhile`);
    await typeLine(p, "echo live-again");
    await within(10000, "live bytes at the watcher", new Promise((resolve) => {
      const check = () => (tail.includes("live-again") ? resolve() : setTimeout(check, 20));
      check();
    }));
  }),
);

test("closing the tab and opening the terminal again within the linger gets the screen back", T, (t) =>
  withWsDaemon({ args: SHELL }, async (d) => {
    const { ctx, p } = await openTerminal(d, d.token);
    const id = await p.evaluate(() => window.agentbridgeTerm.state.id);
    await typeLine(p, "cd /tmp && echo marker-$((6*7))");
    await waitRow(p, "marker-42");
    await p.close();
    const p2 = await ctx.newPage();
    await p2.goto(`${d.origin}/terminal`); // the cookie from the first visit
    await p2.waitForFunction(() => window.agentbridgeTerm?.state.mode === "write", null, { timeout: 15000 });
    assert.equal(await p2.evaluate(() => window.agentbridgeTerm.state.id), id, "another terminal, not the same one");
    await waitRow(p2, "marker-42");
    await typeLine(p2, "pwd");
    await waitRow(p2, "/tmp"); // the same shell: its cd held
    assert.match(d.logs(), /outcome=re-attached/);
  }),
);

// Harness for tests that reach the daemon over its WebSocket listener (GET
// /acp) with peers written by others: npm `ws`, the ACP SDK's WebSocket
// client, a browser. It starts `agentbridge serve` with a tokens file and a
// TCP port of its own, and wraps a `ws` client in an Inbox of JSON-RPC
// messages. Every wait is bounded and driven by an event.
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import WebSocket from "ws";
import { Inbox, LIVE_MS, optionOfKind, within, withDaemon } from "./bridge.mjs";

/** A token the daemon accepts: 24 base64url characters (144 random bits). */
export function newToken() {
  return randomBytes(18).toString("base64url");
}

/**
 * A TCP port that was free a moment ago on 127.0.0.1 (listen on 0, close).
 * Another process could take it before the daemon binds; the daemon then
 * fails to start and the test says so rather than hanging.
 */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/**
 * Starts a daemon listening on a fresh port of 127.0.0.1 with a tokens file
 * holding a `client`, a `viewer` and an `operator` token, runs fn(d), and
 * always stops it. d gains: port, origin (the daemon's own
 * http://127.0.0.1:PORT), wsUrl (ws://127.0.0.1:PORT/acp), token (client
 * role), viewerToken and operatorToken.
 *
 * @param {{args?: string[], agent?: string[]}} opts as for withDaemon; args
 *   may add --allow-origin, --heartbeat, --max-message, …
 * @param {(d: import("./bridge.mjs").Daemon & {port:number, origin:string, wsUrl:string, token:string, viewerToken:string}) => Promise<any>} fn
 */
export async function withWsDaemon(opts, fn) {
  const dir = mkdtempSync(path.join(os.tmpdir(), "abt"));
  try {
    const token = newToken();
    const viewerToken = newToken();
    const operatorToken = newToken();
    const tokens = path.join(dir, "tokens");
    writeFileSync(tokens, `# written by the node WebSocket tests\nclient ${token}\nviewer ${viewerToken}\noperator ${operatorToken}\n`, { mode: 0o600 });
    let port;
    const pickListen = async () => `127.0.0.1:${(port = await freePort())}`;
    return await withDaemon(
      { ...opts, pickListen, args: ["--tokens", tokens, ...(opts.args ?? [])] },
      (d) => {
        Object.assign(d, {
          port,
          origin: `http://127.0.0.1:${port}`,
          wsUrl: `ws://127.0.0.1:${port}/acp`,
          token,
          viewerToken,
          operatorToken,
        });
        return fn(d);
      },
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * The outcome of a WebSocket handshake that is expected to be refused:
 * resolves with the HTTP status of the refusal; rejects if the socket opens
 * or nothing happens within ms.
 *
 * @param {string} url
 * @param {string[]|undefined} protocols
 * @param {import("ws").ClientOptions} options
 */
export function refusedStatus(url, protocols, options = {}, ms = LIVE_MS) {
  return within(
    ms,
    `the handshake with ${url} to be refused`,
    new Promise((resolve, reject) => {
      const ws = new WebSocket(url, protocols, options);
      ws.once("unexpected-response", (_req, res) => {
        const status = res.statusCode;
        res.resume();
        ws.terminate();
        resolve(status);
      });
      ws.once("open", () => {
        ws.terminate();
        reject(new Error(`the handshake with ${url} succeeded; it should have been refused`));
      });
      ws.once("error", (e) => reject(new Error(`handshake with ${url} failed without an HTTP answer: ${e.message}`)));
    }),
  );
}

/**
 * A JSON-RPC peer over a `ws` client: every text message parsed into inbox
 * (an unparsable one as {_invalid}), close and error recorded. Use
 * WsPeer.open so the daemon's cleanup terminates it.
 */
export class WsPeer {
  /**
   * @param {string} url
   * @param {string[]|undefined} protocols
   * @param {import("ws").ClientOptions} options
   */
  constructor(url, protocols, options = {}) {
    this.inbox = new Inbox();
    this.answers = new Map();
    this.ws = new WebSocket(url, protocols, options);
    this.pings = [];
    this.frames = 0;
    this.closed = new Promise((resolve) => {
      this.ws.once("close", (code, reason) => {
        this.closeInfo = { code, reason: reason.toString() };
        this.inbox.close(`socket closed (${code} ${reason})`);
        resolve(this.closeInfo);
      });
    });
    this.opened = new Promise((resolve, reject) => {
      this.ws.once("open", resolve);
      this.ws.once("unexpected-response", (_req, res) => {
        res.resume();
        reject(new Error(`handshake refused with HTTP ${res.statusCode}`));
      });
      this.ws.once("error", reject);
    });
    this.opened.catch(() => {});
    this.ws.on("error", (e) => (this.error = e));
    this.ws.on("ping", (data) => this.pings.push(data));
    this.ws.on("message", (data, isBinary) => {
      this.frames++;
      if (isBinary) {
        this.inbox.push({ _binary: data });
        return;
      }
      const text = data.toString("utf8");
      let m;
      try {
        m = JSON.parse(text);
      } catch {
        m = { _invalid: text };
      }
      this.inbox.push(m);
      const answer = m.id !== undefined && this.answers.get(m.method);
      if (answer) {
        let reply;
        try {
          reply = { id: m.id, result: answer(m) };
        } catch (e) {
          reply = { id: m.id, error: { code: -32603, message: String(e.message ?? e) } };
        }
        if (this.ws.readyState === WebSocket.OPEN) this.send(reply);
      }
    });
  }

  /** Opens a peer to d (registered for cleanup) and waits for the handshake. */
  static async open(d, url, protocols, options = {}) {
    const p = new WsPeer(url, protocols, options);
    d.defer(() => p.terminate());
    await within(LIVE_MS, `the WebSocket handshake with ${url}`, p.opened);
    return p;
  }

  get all() {
    return this.inbox.all;
  }

  /**
   * Answers every request for method that arrives from now on with
   * fn(request) as its result (a throw answers with an error). The request
   * still lands in the inbox.
   */
  answer(method, fn) {
    this.answers.set(method, fn);
  }

  send(m, opts = {}) {
    this.ws.send(JSON.stringify({ jsonrpc: "2.0", ...m }), opts);
  }

  request(id, method, params) {
    this.send(params === undefined ? { id, method } : { id, method, params });
  }

  waitFor(what, match, ms = LIVE_MS) {
    return this.inbox.waitFor(what, match, ms);
  }

  /** The response to this peer's request id. */
  response(id, ms = LIVE_MS) {
    return this.waitFor(`response ${JSON.stringify(id)}`, (m) => m.method === undefined && JSON.stringify(m.id) === JSON.stringify(id), ms);
  }

  /** Sends a request and returns its result; an error response throws. */
  async call(id, method, params, ms = LIVE_MS) {
    this.request(id, method, params);
    const m = await this.response(id, ms);
    if (m.error) throw new Error(`${method}: error ${JSON.stringify(m.error)}`);
    return m.result;
  }

  /** Starts the close handshake and resolves with the close the peer saw. */
  close(code, reason, ms = LIVE_MS) {
    this.ws.close(code, reason);
    return within(ms, "the close handshake to finish", this.closed);
  }

  terminate() {
    this.ws.terminate();
  }
}

/** The ACP initialize params of a client that offers nothing beyond the basics. */
export const initializeParams = {
  protocolVersion: 1,
  clientCapabilities: { fs: { readTextFile: false, writeTextFile: false }, terminal: false },
  clientInfo: { name: "agentbridge-node-ws-test", version: "0.0.0" },
};

/**
 * Runs one ACP turn on p in session sessionId: sends session/prompt with
 * text, answers every session/request_permission with its allow option, and
 * returns {result, updates, permissions} once the prompt's response arrived.
 */
export async function promptTurn(p, id, sessionId, text, ms = 30000) {
  const permissions = [];
  p.answer("session/request_permission", (req) => {
    permissions.push(req);
    return { outcome: { outcome: "selected", optionId: optionOfKind(req.params, "allow") } };
  });
  const res = await p.call(id, "session/prompt", { sessionId, prompt: [{ type: "text", text }] }, ms);
  const updates = p.all.filter((m) => m.method === "session/update" && m.params?.sessionId === sessionId).map((m) => m.params.update);
  return { result: res, updates, permissions };
}

/** The demo agent's text of chunk i of n with size bytes (demoagent.ChunkText). */
export function chunkText(i, n, size) {
  let s = `chunk ${i} of ${n}: `;
  if (s.length >= size) return s.slice(0, size);
  for (let j = 0; s.length < size; j++) s += String.fromCharCode(97 + (j % 26));
  return s;
}

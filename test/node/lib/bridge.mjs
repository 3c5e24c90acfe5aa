// Harness for tests that run the real agentbridge binary against peers
// written by others (the ACP TypeScript SDK): it starts `agentbridge serve`
// on a socket in a fresh temp dir, spawns `agentbridge connect` shims, and
// speaks raw NDJSON over the Unix socket. Every wait is bounded and driven by
// an event (a message, an exit, a connect), never by a fixed sleep.
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { Readable, Writable } from "node:stream";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));

/** Directory of the node tests (test/node), where fixtures/ lives. */
export const testDir = path.resolve(here, "..");

/** The agentbridge binary under test: $AGENTBRIDGE_BIN, else bin/agentbridge of the repository. */
export function binPath() {
  const p = process.env.AGENTBRIDGE_BIN || path.resolve(testDir, "../../bin/agentbridge");
  if (!existsSync(p)) {
    throw new Error(`agentbridge binary not found at ${p}: run "make build" (or "make test-node", which builds it) or set AGENTBRIDGE_BIN`);
  }
  return p;
}

/**
 * How long a harness wait (a message, a response, a close) gives its event
 * before failing the test. A liveness bound, not a measure: the wait ends
 * when the event comes. make test runs the node suite beside the Go and e2e
 * suites, and on a loaded machine an SDK agent's node process once took 12s
 * to answer initialize.
 */
export const LIVE_MS = 30000;

/** Rejects with a message naming what did not happen when p does not settle within ms. */
export function within(ms, what, p) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms}ms waiting for ${what}`)), ms);
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}

/** Resolves with {code, signal} when child exits (at once if it already has). */
function exited(child) {
  if (child.exitCode !== null || child.signalCode !== null) {
    return Promise.resolve({ code: child.exitCode, signal: child.signalCode });
  }
  return new Promise((resolve) => child.once("exit", (code, signal) => resolve({ code, signal })));
}

/** Keeps the last max bytes of a child's output for failure messages. */
class Tail {
  constructor(max = 256 << 10) {
    this.max = max;
    this.text = "";
  }
  add(chunk) {
    this.text += chunk.toString();
    if (this.text.length > this.max) this.text = this.text.slice(this.text.length - this.max);
  }
}

/**
 * A running `agentbridge serve`. Use withDaemon so it is always stopped.
 */
export class Daemon {
  /**
   * @param {object} [opts]
   * @param {string[]} [opts.args] extra serve flags (before "--")
   * @param {string[]} [opts.agent] agent command; none runs the built-in demo agent
   * @param {string} [opts.listen] --listen address (host:port); none disables the TCP listener
   */
  constructor(opts = {}) {
    this.dir = mkdtempSync(path.join(os.tmpdir(), "abn"));
    this.sock = path.join(this.dir, "ab.sock");
    this.url = "unix://" + this.sock;
    this.log = new Tail();
    this.cleanups = [];
    const args = ["serve", "--uds", this.sock, "--listen", opts.listen ?? "", "--log-level", "debug", ...(opts.args ?? [])];
    this.ownStdio = args.includes("--agent-stdio");
    if (opts.agent?.length) args.push("--", ...opts.agent);
    this.proc = spawn(binPath(), args, {
      cwd: testDir,
      env: { ...process.env, XDG_RUNTIME_DIR: this.dir },
      stdio: ["ignore", "pipe", "pipe"],
    });
    // "agentbridge serving" is the daemon's announcement that the agent is
    // started too (the socket alone can accept before; see the startup test).
    const serving = deferred();
    this.serving = serving.promise;
    let announced = false;
    const watch = (b) => {
      this.log.add(b);
      if (!announced && this.log.text.includes("agentbridge serving")) {
        announced = true;
        serving.resolve();
      }
    };
    this.proc.stdout.on("data", watch);
    this.proc.stderr.on("data", watch);
    this.exit = exited(this.proc);
  }

  /**
   * Resolves once the daemon has announced it is serving and its socket
   * accepts a connection; rejects if it exits first.
   */
  async ready(ms = 15000) {
    await within(ms, "the daemon's \"agentbridge serving\" log line", Promise.race([this.serving, this.exit]));
    await this.acceptable(ms);
  }

  /** Resolves once the socket accepts a connection; rejects if the daemon exits first. */
  async acceptable(ms = 15000) {
    const deadline = Date.now() + ms;
    let dead = false;
    this.exit.then(() => (dead = true));
    for (;;) {
      if (dead) throw new Error(`daemon exited during start (${JSON.stringify(await this.exit)})`);
      const ok = await new Promise((resolve) => {
        const c = net.createConnection(this.sock);
        c.once("connect", () => {
          c.destroy();
          resolve(true);
        });
        c.once("error", () => resolve(false));
      });
      if (ok) return;
      if (Date.now() > deadline) throw new Error(`daemon did not listen on ${this.sock} within ${ms}ms`);
      // Retry pacing while the daemon binds; the exit check above ends it early.
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  /** Registers fn to run (last registered first) before the daemon stops. */
  defer(fn) {
    this.cleanups.push(fn);
  }

  /** Runs the cleanups, then SIGTERM; fails if the daemon ignores it for 15s. */
  async stop() {
    const errors = [];
    for (const fn of this.cleanups.reverse()) {
      try {
        await fn();
      } catch (e) {
        errors.push(e);
      }
    }
    this.cleanups = [];
    try {
      if (this.proc.exitCode !== null || this.proc.signalCode !== null) {
        errors.push(new Error(`the daemon exited by itself during the test (${JSON.stringify(await this.exit)})`));
      } else {
        this.proc.kill("SIGTERM");
        try {
          await within(15000, "the daemon to exit after SIGTERM", this.exit);
        } catch (e) {
          this.proc.kill("SIGKILL");
          await this.exit;
          errors.push(e);
        }
      }
    } finally {
      rmSync(this.dir, { recursive: true, force: true });
    }
    if (errors.length) throw errors[0];
  }

  logs() {
    return this.log.text;
  }

  /**
   * The stdio modes of the daemon's "agent started" log lines that differ
   * from $AGENTBRIDGE_AGENT_STDIO (none when it is unset): the daemon reads
   * that variable itself, so a pipe-mode run (make test runs the suite in
   * both modes) that quietly ran on the socketpair would show here.
   */
  stdioMismatches() {
    const want = process.env.AGENTBRIDGE_AGENT_STDIO;
    if (!want || this.ownStdio) return [];
    return [...this.log.text.matchAll(/msg="agent started".* stdio=(\w+)/g)].map((m) => m[1]).filter((m) => m !== want);
  }
}

/**
 * Starts a daemon, runs fn(daemon), and always stops it. A failure carries
 * the tail of the daemon's log. opts.pickListen, if given, is an async
 * function returning the --listen address: a daemon that could not bind it
 * (another process took the port after it was picked: test files run in
 * parallel, beside the Go suites in make test) is started again on a new one.
 */
export async function withDaemon(opts, fn) {
  let d, result, failure;
  for (let attempt = 1; ; attempt++) {
    const o = opts.pickListen ? { ...opts, listen: await opts.pickListen() } : opts;
    d = new Daemon(o);
    try {
      await d.ready();
      break;
    } catch (e) {
      if (!opts.pickListen || attempt >= 5 || !d.logs().includes("address already in use")) {
        failure = e;
        break;
      }
      await d.stop().catch(() => {}); // it has exited: this removes its dir
    }
  }
  if (failure === undefined) {
    try {
      result = await fn(d);
    } catch (e) {
      failure = e;
    }
  }
  try {
    await d.stop();
  } catch (e) {
    failure ??= e;
  }
  const wrong = d.stdioMismatches();
  if (wrong.length) failure ??= new Error(`agent started with stdio=${wrong[0]}, but AGENTBRIDGE_AGENT_STDIO=${process.env.AGENTBRIDGE_AGENT_STDIO}`);
  if (failure === undefined) return result;
  if (failure instanceof Error) failure.message += `\n--- daemon log (tail) ---\n${d.logs().slice(-12000)}`;
  throw failure;
}

/**
 * Spawns `agentbridge connect unix:///…` and returns the child with its stdio
 * as web streams (for the SDK's ndJsonStream). The daemon's cleanup closes its
 * stdin and waits for it.
 */
export function spawnConnect(d) {
  const child = spawn(binPath(), ["connect", d.url], { stdio: ["pipe", "pipe", "pipe"] });
  const stderr = new Tail();
  child.stderr.on("data", (b) => stderr.add(b));
  const exit = exited(child);
  const shim = {
    child,
    exit,
    stderr: () => stderr.text,
    // Web streams for the SDK, made on first use so a test may read the
    // child's stdout directly instead.
    get output() {
      return (this._output ??= Writable.toWeb(child.stdin));
    },
    get input() {
      return (this._input ??= Readable.toWeb(child.stdout));
    },
    /** Closes stdin and resolves with the exit status; kills it after ms. */
    async close(ms = LIVE_MS) {
      child.stdin.end();
      try {
        return await within(ms, "agentbridge connect to exit after stdin closed", exit);
      } catch (e) {
        child.kill("SIGKILL");
        await exit;
        throw e;
      }
    },
  };
  d.defer(async () => {
    if (child.exitCode === null && child.signalCode === null) await shim.close();
  });
  return shim;
}

function brief(msgs) {
  const out = msgs.slice(0, 8).map((m) => {
    const s = JSON.stringify(m);
    return s.length > 200 ? s.slice(0, 200) + "..." : s;
  });
  if (msgs.length > 8) out.push(`... ${msgs.length - 8} more`);
  return out.join(" ");
}

/**
 * Messages as they arrive: all of them in `all`; waitFor takes the first one
 * not yet taken that matches, or waits for it (bounded).
 */
export class Inbox {
  constructor() {
    this.all = [];
    this.pending = [];
    this.waiters = [];
    this.closedWhy = null;
  }

  push(m) {
    this.all.push(m);
    const i = this.waiters.findIndex((w) => w.match(m));
    if (i >= 0) {
      const [w] = this.waiters.splice(i, 1);
      clearTimeout(w.timer);
      w.resolve(m);
      return;
    }
    this.pending.push(m);
  }

  /** Fails every waiter, now and later, with why. */
  close(why) {
    this.closedWhy = why;
    for (const w of this.waiters.splice(0)) {
      clearTimeout(w.timer);
      w.reject(new Error(`${why} while waiting for ${w.what} (unmatched: ${brief(this.pending)})`));
    }
  }

  waitFor(what, match, ms = LIVE_MS) {
    const i = this.pending.findIndex(match);
    if (i >= 0) return Promise.resolve(this.pending.splice(i, 1)[0]);
    if (this.closedWhy) return Promise.reject(new Error(`${this.closedWhy} while waiting for ${what}`));
    return new Promise((resolve, reject) => {
      const w = { what, match, resolve, reject };
      w.timer = setTimeout(() => {
        this.waiters.splice(this.waiters.indexOf(w), 1);
        reject(new Error(`no ${what} within ${ms}ms (unmatched: ${brief(this.pending)})`));
      }, ms);
      this.waiters.push(w);
    });
  }
}

/** A raw NDJSON JSON-RPC client over the daemon's Unix socket. */
export class RawClient {
  constructor(sock) {
    this.inbox = new Inbox();
    this.sock = net.createConnection(sock);
    this.connected = new Promise((resolve, reject) => {
      this.sock.once("connect", resolve);
      this.sock.once("error", reject);
    });
    let buf = "";
    this.sock.setEncoding("utf8");
    this.sock.on("data", (s) => {
      buf += s;
      for (let i = buf.indexOf("\n"); i >= 0; i = buf.indexOf("\n")) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        if (line.trim() === "") continue;
        let m;
        try {
          m = JSON.parse(line);
        } catch {
          m = { _invalid: line };
        }
        this.inbox.push(m);
      }
    });
    this.sock.on("error", () => {});
    this.sock.on("close", () => this.inbox.close("connection closed"));
  }

  static async connect(d) {
    const c = new RawClient(d.sock);
    d.defer(() => c.close());
    await within(5000, "a connection to the daemon socket", c.connected);
    return c;
  }

  /** Every message received so far. */
  get all() {
    return this.inbox.all;
  }

  send(m) {
    this.sock.write(JSON.stringify({ jsonrpc: "2.0", ...m }) + "\n");
  }

  request(id, method, params) {
    this.send(params === undefined ? { id, method } : { id, method, params });
  }

  waitFor(what, match, ms = LIVE_MS) {
    return this.inbox.waitFor(what, match, ms);
  }

  /** The response to this client's request id (its own id, as sent). */
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

  close() {
    this.sock.destroy();
  }
}

/** The optionId of the first option whose kind starts with prefix, in a session/request_permission request's options. */
export function optionOfKind(params, prefix) {
  const o = (params.options ?? []).find((o) => String(o.kind).startsWith(prefix));
  if (!o) throw new Error(`permission request without a ${prefix}* option: ${JSON.stringify(params.options)}`);
  return o.optionId;
}

/** A promise with its resolve function, for barriers between peers. */
export function deferred() {
  let resolve, reject;
  const promise = new Promise((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

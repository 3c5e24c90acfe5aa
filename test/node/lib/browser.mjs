// Headless Chromium for the browser tests (playwright-core drives the
// Debian chromium; no browser download), and a TCP proxy that can drop every
// connection through it, to cut a page's WebSocket the way a network does.
import { mkdirSync } from "node:fs";
import net from "node:net";
import path from "node:path";
import { chromium } from "playwright-core";
import { testDir, within } from "./bridge.mjs";

export const chromiumPath = process.env.AGENTBRIDGE_CHROMIUM || "/usr/bin/chromium";

/** Launches headless Chromium (bounded). */
export function launchChromium() {
  return within(
    60000,
    `Chromium (${chromiumPath}) to start`,
    chromium.launch({
      executablePath: chromiumPath,
      headless: true,
      args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
      timeout: 60000,
    }),
  );
}

/** Collects a page's console lines and errors, for failure messages. */
export function watchConsole(p) {
  const lines = [];
  p.on("console", (m) => lines.push(`${m.type()}: ${m.text()}`));
  p.on("pageerror", (e) => lines.push(`pageerror: ${e.message}`));
  return lines;
}

/**
 * Where a committed screenshot goes: docs/NAME when
 * AGENTBRIDGE_UPDATE_SCREENSHOTS is set (the README shows them), else
 * null.
 */
export function docsScreenshot(name) {
  if (!process.env.AGENTBRIDGE_UPDATE_SCREENSHOTS) return null;
  const dir = path.resolve(testDir, "../../docs");
  mkdirSync(dir, { recursive: true });
  return path.join(dir, name);
}

/**
 * A TCP proxy on 127.0.0.1 to target port. dropAll() destroys every
 * connection through it (both sides), as a network that fails does; new
 * connections keep working unless hold() keeps the network down until
 * release().
 */
export async function tcpProxy(targetPort) {
  const pairs = new Set();
  let holding = false;
  const server = net.createServer((client) => {
    if (holding) {
      client.destroy(); // the network is still down
      return;
    }
    const upstream = net.createConnection(targetPort, "127.0.0.1");
    const pair = { client, upstream };
    pairs.add(pair);
    const end = () => {
      pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on("error", end);
    upstream.on("error", end);
    client.on("close", end);
    upstream.on("close", end);
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", resolve);
  });
  return {
    port: server.address().port,
    get open() {
      return pairs.size;
    },
    /** Refuses new connections (each is closed at once) until release(). */
    hold() {
      holding = true;
    },
    release() {
      holding = false;
    },
    dropAll() {
      const n = pairs.size;
      for (const { client, upstream } of pairs) {
        client.resetAndDestroy?.() ?? client.destroy();
        upstream.destroy();
      }
      pairs.clear();
      return n;
    },
    close() {
      this.dropAll();
      return new Promise((resolve) => server.close(resolve));
    },
  };
}

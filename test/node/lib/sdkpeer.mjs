// An ACP client built on the ACP TypeScript SDK's app API (client() over
// ndJsonStream), talking through a spawned `agentbridge connect` shim the
// way an editor configured with `agentbridge connect unix:///…` as its agent
// command does.
import * as acp from "@agentclientprotocol/sdk";
import { Inbox, spawnConnect } from "./bridge.mjs";

/** Client capabilities of a client that offers nothing beyond the basics. */
export const plainCapabilities = { fs: { readTextFile: false, writeTextFile: false }, terminal: false };

/**
 * Connects an SDK client to the daemon d through `agentbridge connect`.
 * Every session/update notification and session/request_permission request
 * the SDK hands to the client's callbacks lands in `events` as
 * {kind: "update", params} or {kind: "permission", params, requestId}, in the
 * order the callbacks ran. onPermission(params) returns the answer.
 *
 * @param {import("./bridge.mjs").Daemon} d
 * @param {{onPermission: (params: any) => any, name?: string}} opts
 */
export function sdkClient(d, { onPermission, name = "agentbridge-node-test" }) {
  const shim = spawnConnect(d);
  const events = new Inbox();
  const app = acp
    .client({ name })
    .onRequest(acp.methods.client.session.requestPermission, async ({ params, requestId }) => {
      events.push({ kind: "permission", params, requestId });
      return await onPermission(params);
    })
    .onNotification(acp.methods.client.session.update, ({ params }) => {
      events.push({ kind: "update", params });
    });
  const conn = app.connect(acp.ndJsonStream(shim.output, shim.input));
  conn.closed.then(() => events.close("the SDK connection closed"));
  d.defer(() => conn.close());
  return {
    conn,
    agent: conn.agent,
    events,
    shim,
    initialize() {
      return conn.agent.request(acp.methods.agent.initialize, {
        protocolVersion: acp.PROTOCOL_VERSION,
        clientCapabilities: plainCapabilities,
        clientInfo: { name, version: "0.0.0" },
      });
    },
    newSession(cwd) {
      return conn.agent.request(acp.methods.agent.session.new, { cwd, mcpServers: [] });
    },
    prompt(sessionId, text) {
      return conn.agent.request(acp.methods.agent.session.prompt, { sessionId, prompt: [{ type: "text", text }] });
    },
  };
}

/** Matches a session/update event whose update has the given kind (and fields). */
export function isUpdate(sessionUpdate, fields = {}) {
  return (e) =>
    e.kind === "update" &&
    e.params.update.sessionUpdate === sessionUpdate &&
    Object.entries(fields).every(([k, v]) => e.params.update[k] === v);
}

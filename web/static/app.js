// agentbridge dashboard. One WebSocket to /acp (the agentbridge_token cookie
// authenticates it), enveloped delivery (bridge/hello {envelope: true}), one
// attached session at a time. Every event carries its seq: the page keeps the
// last one per session and re-attaches with bridge/attach {since} after a
// dropped connection, so nothing is shown twice and gaps are shown as gaps.
// A dashboard is a viewer at heart: it asks to be degraded (summaries), not
// to catch up, when it falls behind.

const $ = (sel) => document.querySelector(sel);
const el = (tag, props = {}, ...children) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "dataset") Object.assign(e.dataset, v);
    else if (k === "text") e.textContent = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
};

const RAW_KEEP = 300;
const SESSIONS_EVERY = 2000;
const HEALTH_EVERY = 5000;

// Exposed for tests and for poking at from the console.
const state = {
  role: null,
  connected: false,
  connections: 0, // sockets opened so far
  current: null, // the session shown
  attached: null, // the session attached on this socket
  lastSeq: {}, // sessionId -> last seq shown
  duplicates: 0, // events dropped because their seq was already shown
  gaps: 0,
  summaries: 0,
  permissions: {}, // request id -> {state, option}
};
window.agentbridge = state;

let ws = null;
let nextId = 1;
const calls = new Map();
let backoff = 250;
let sessionsTimer = 0;

function setConn(s) {
  const c = $("#conn");
  c.dataset.state = s;
  c.textContent = s;
}

function connect() {
  const proto = location.protocol === "https:" ? "wss" : "ws";
  const sock = new WebSocket(`${proto}://${location.host}/acp`);
  ws = sock;
  setConn(state.connections ? "reconnecting" : "connecting");
  sock.onopen = () => onOpen(sock).catch((e) => console.error("dashboard:", e));
  sock.onmessage = (e) => {
    let m;
    try {
      m = JSON.parse(e.data);
    } catch {
      console.warn("dashboard: a frame that is not JSON", e.data);
      return;
    }
    onMessage(m);
  };
  let opened = false;
  sock.addEventListener("open", () => (opened = true));
  sock.onclose = (e) => {
    if (ws !== sock) return;
    if (!opened) {
      // Refused before the upgrade: a token that is no longer valid shows
      // the login form again (GET / answers 401 then).
      fetch("/", { method: "HEAD", cache: "no-store" }).then((r) => r.status === 401 && location.assign("/"), () => {});
    }
    state.connected = false;
    state.attached = null;
    for (const [, c] of calls) c.reject(new Error(`connection closed (${e.code})`));
    calls.clear();
    clearTimeout(sessionsTimer);
    setConn("reconnecting");
    setTimeout(connect, backoff);
    backoff = Math.min(backoff * 2, 5000);
  };
}

async function onOpen(sock) {
  state.connections++;
  const hello = await call("bridge/hello", { envelope: true, onSlow: "degrade" });
  backoff = 250;
  state.role = hello.role;
  state.connected = true;
  document.body.dataset.role = hello.role;
  $("#role").textContent = hello.role;
  if (hello.role !== "viewer") {
    // Shown only when the daemon runs with --terminal (HEAD is 404 otherwise).
    fetch("/terminal", { method: "HEAD" }).then((r) => ($("#terminal-link").hidden = !r.ok), () => {});
  }
  $("#cancel").hidden = hello.role === "viewer" || !state.current;
  setConn("connected");
  await refreshSessions();
  const want = state.current ?? new URLSearchParams(location.hash.slice(1)).get("session");
  if (want && ws === sock) await show(want);
}

function send(m) {
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ jsonrpc: "2.0", ...m }));
}

function call(method, params) {
  const id = `d${nextId++}`;
  return new Promise((resolve, reject) => {
    calls.set(id, { resolve, reject });
    send({ id, method, params });
  });
}

function onMessage(m) {
  if (m.method === undefined && m.id !== undefined) {
    const c = calls.get(m.id);
    if (!c) return;
    calls.delete(m.id);
    if (m.error) c.reject(Object.assign(new Error(m.error.message), { code: m.error.code }));
    else c.resolve(m.result);
    return;
  }
  if (m.id !== undefined) {
    // An agent request delivered to this page.
    if (m.method === "session/request_permission") {
      permission(m.params, m.id, true);
    } else {
      send({ id: m.id, error: { code: -32601, message: `the dashboard does not answer ${m.method}` } });
    }
    return;
  }
  const p = m.params ?? {};
  switch (m.method) {
    case "bridge/event":
      onEvent(p.sessionId, p.seq, p.message);
      return;
    case "bridge/gap":
      if (p.sessionId !== state.current) return;
      state.gaps++;
      raw(m);
      note(`events ${p.fromSeq}–${p.toSeq} were not delivered to this page (${p.reason})`, "gap");
      state.lastSeq[p.sessionId] = Math.max(state.lastSeq[p.sessionId] ?? 0, p.toSeq);
      return;
    case "bridge/summary":
      if (p.sessionId !== state.current) return;
      state.summaries++;
      raw(m);
      note(`behind: ${p.dropped} events (${p.bytes} bytes) summarised — ${p.text ?? ""}`, "summary");
      return;
    case "bridge/status":
      updateRow({ sessionId: p.sessionId, status: p.status });
      if (p.sessionId === state.current) setStatus(p.status);
      healthSoon(); // awaiting_hitl comes and goes with pending_agent_requests
      return;
    case "bridge/resolved":
      resolved(p.id);
      healthSoon();
      return;
  }
  raw(m);
}

// ---- the attached session's stream ----

function onEvent(sid, seq, msg) {
  if (sid !== state.current) return;
  const last = state.lastSeq[sid] ?? 0;
  if (seq <= last) {
    state.duplicates++;
    return;
  }
  state.lastSeq[sid] = seq;
  raw({ seq, ...msg });
  if (msg?.method === "session/update") renderUpdate(msg.params?.update ?? {}, seq);
}

function block(kind) {
  const stream = $("#stream");
  const lastEl = stream.lastElementChild;
  if (lastEl && lastEl.classList.contains("msg") && lastEl.classList.contains(kind)) return lastEl;
  const b = el("div", { class: `msg ${kind}` });
  stream.append(b);
  return b;
}

function textOf(content) {
  if (!content) return "";
  if (content.type === "text") return content.text ?? "";
  if (content.type === "resource_link") return `[${content.name ?? content.uri}]`;
  return `[${content.type}]`;
}

function renderUpdate(u, seq) {
  const stream = $("#stream");
  const stick = stream.scrollTop + stream.clientHeight >= stream.scrollHeight - 20;
  switch (u.sessionUpdate) {
    case "agent_message_chunk":
      block("agent").append(el("span", { class: "chunk", dataset: { seq: String(seq) }, text: textOf(u.content) }));
      break;
    case "user_message_chunk":
      block("user").append(el("span", { class: "chunk", text: textOf(u.content) }));
      break;
    case "agent_thought_chunk":
      block("thought").append(el("span", { class: "chunk", text: textOf(u.content) }));
      break;
    case "tool_call":
    case "tool_call_update":
      tool(u);
      break;
    case "plan":
      plan(u.entries ?? []);
      break;
    default:
      return;
  }
  if (stick) stream.scrollTop = stream.scrollHeight;
}

function tool(u) {
  let t = document.querySelector(`#stream .tool[data-id="${CSS.escape(u.toolCallId ?? "")}"]`);
  if (!t) {
    t = el("div", { class: "tool", dataset: { id: u.toolCallId ?? "" } });
    $("#stream").append(t);
  }
  if (u.title) t.dataset.title = u.title;
  if (u.status) t.dataset.status = u.status;
  t.textContent = `${t.dataset.title ?? u.toolCallId} — ${t.dataset.status ?? "pending"}`;
}

function plan(entries) {
  const p = $("#plan");
  p.replaceChildren(...entries.map((e) => el("li", { dataset: { status: e.status ?? "" }, text: `${e.content}${e.status ? ` (${e.status})` : ""}` })));
  p.hidden = entries.length === 0;
}

function note(text, kind) {
  $("#stream").append(el("div", { class: `note ${kind}`, text }));
}

function raw(m) {
  const r = $("#raw");
  r.append(JSON.stringify(m) + "\n");
  while (r.childNodes.length > RAW_KEEP) r.firstChild.remove();
}

// ---- permission requests ----

function permission(params, id, delivered) {
  const key = String(id);
  let card = document.querySelector(`#permissions .perm[data-id="${CSS.escape(key)}"]`);
  if (card && (!delivered || card.dataset.delivered === "true")) return;
  const tc = params.toolCall ?? {};
  const fresh = el("div", { class: "perm", dataset: { id: key, state: "pending", delivered: String(delivered) } },
    el("div", { class: "title", text: `Permission: ${tc.title ?? tc.toolCallId ?? "a tool call"}` }),
    el("div", { class: "muted", text: `session ${params.sessionId ?? "?"} · request ${key}` }));
  const opts = el("div", { class: "options" });
  if (delivered && state.role !== "viewer") {
    for (const o of params.options ?? []) {
      const b = el("button", { type: "button", class: String(o.kind).startsWith("allow") ? "primary" : "", dataset: { option: o.optionId, kind: o.kind }, text: o.name ?? o.optionId });
      b.addEventListener("click", () => answer(fresh, id, o.optionId));
      opts.append(b);
    }
  } else {
    opts.append(el("span", { class: "muted", text: "waiting for the session's owner or an operator" }));
  }
  fresh.append(opts);
  if (card) card.replaceWith(fresh);
  else $("#permissions").append(fresh);
  state.permissions[key] = { state: "pending" };
  healthSoon();
}

function answer(card, id, optionId) {
  send({ id, result: { outcome: { outcome: "selected", optionId } } });
  card.dataset.state = "answered";
  for (const b of card.querySelectorAll("button")) b.disabled = true;
  card.querySelector(".options").append(el("span", { class: "muted", text: ` answered: ${optionId}` }));
  state.permissions[String(id)] = { state: "answered", option: optionId };
}

function resolved(id) {
  const key = String(id);
  const card = document.querySelector(`#permissions .perm[data-id="${CSS.escape(key)}"]`);
  if (card && card.dataset.state === "pending") {
    card.dataset.state = "resolved";
    card.querySelector(".options").replaceChildren(el("span", { class: "muted", text: "resolved by another client (bridge/resolved)" }));
  }
  state.permissions[key] = { ...(state.permissions[key] ?? {}), state: state.permissions[key]?.state === "answered" ? "answered" : "resolved" };
}

// ---- sessions ----

async function refreshSessions() {
  clearTimeout(sessionsTimer);
  const sock = ws;
  try {
    const r = await call("bridge/sessions", { limit: 200 });
    const rows = r.sessions ?? [];
    $("#sessions tbody").replaceChildren(...rows.map(row));
    $("#no-sessions").hidden = rows.length > 0;
    $("#more-sessions").hidden = !r.nextCursor;
    if (state.current) {
      const cur = rows.find((s) => s.sessionId === state.current);
      if (cur) {
        setStatus(cur.status);
        $("#session-owner").textContent = cur.ownerConnected ? "owner connected" : "owner gone";
        if (cur.status !== "awaiting_hitl") settlePending([]);
        else await refreshPending();
      }
    }
  } catch (e) {
    console.warn("dashboard: bridge/sessions", e.message);
  }
  if (ws === sock && state.connected) sessionsTimer = setTimeout(refreshSessions, SESSIONS_EVERY);
}

function row(s) {
  const tr = el("tr", { dataset: { session: s.sessionId }, "aria-selected": String(s.sessionId === state.current) },
    el("td", { class: "sid", title: s.sessionId, text: s.sessionId }),
    el("td", {}, el("span", { class: "status", dataset: { status: s.status }, text: s.status })),
    el("td", { class: "owner", text: s.ownerConnected ? "connected" : "gone" }),
    el("td", { text: String(s.clients) }),
    el("td", { class: "seq", text: String(s.seq) }));
  tr.addEventListener("click", () => show(s.sessionId));
  return tr;
}

function updateRow(s) {
  const tr = document.querySelector(`#sessions tr[data-session="${CSS.escape(s.sessionId)}"]`);
  if (!tr) return;
  const st = tr.querySelector(".status");
  st.dataset.status = s.status;
  st.textContent = s.status;
}

function setStatus(status) {
  const s = $("#session-status");
  s.dataset.status = status;
  s.textContent = status;
}

// show attaches the page's socket to sid: from the last seq shown (a
// resume), or the last 500 events (a first look).
async function show(sid) {
  const sock = ws;
  if (state.current !== sid) {
    if (state.attached && state.attached !== sid) call("bridge/detach", { sessionId: state.attached }).catch(() => {});
    state.attached = null;
    state.current = sid;
    $("#stream").replaceChildren();
    $("#permissions").replaceChildren();
    $("#plan").replaceChildren();
    $("#plan").hidden = true;
    $("#raw").replaceChildren();
    $("#session-title").textContent = sid;
    history.replaceState(null, "", `#session=${encodeURIComponent(sid)}`);
    for (const tr of document.querySelectorAll("#sessions tbody tr")) tr.setAttribute("aria-selected", String(tr.dataset.session === sid));
  }
  $("#cancel").hidden = state.role === "viewer";
  if (!state.connected || state.attached === sid) return;
  const since = state.lastSeq[sid];
  const params = since !== undefined ? { sessionId: sid, since } : { sessionId: sid, last: 500 };
  try {
    const r = await call("bridge/attach", params);
    if (ws !== sock) return;
    state.attached = sid;
    setStatus(r.status);
    if (since === undefined && r.seq > r.replayed) note(`showing the last ${r.replayed} of ${r.seq} events`, "summary");
    await refreshPending();
  } catch (e) {
    note(`cannot attach: ${e.message}`, "gap");
  }
}

async function refreshPending() {
  const sid = state.current;
  if (!sid || !state.connected) return;
  try {
    const snap = await call("bridge/snapshot", { sessionId: sid });
    if (sid !== state.current) return;
    $("#session-owner").textContent = snap.ownerConnected ? "owner connected" : "owner gone";
    for (const req of snap.pending ?? []) {
      if (req.method === "session/request_permission") permission(req.params ?? {}, req.id, false);
    }
    settlePending((snap.pending ?? []).map((r) => String(r.id)));
  } catch (e) {
    console.warn("dashboard: bridge/snapshot", e.message);
  }
}

// settlePending marks cards that are no longer pending as done.
function settlePending(stillPending) {
  for (const card of document.querySelectorAll('#permissions .perm[data-state="pending"]')) {
    if (!stillPending.includes(card.dataset.id)) {
      card.dataset.state = "resolved";
      card.querySelector(".options").replaceChildren(el("span", { class: "muted", text: "resolved" }));
    }
  }
}

$("#cancel").addEventListener("click", () => {
  if (state.current) send({ method: "session/cancel", params: { sessionId: state.current } });
});
$("#show-raw").addEventListener("change", (e) => {
  $("#raw").hidden = !e.target.checked;
});

// ---- health ----

// The panel is polled every HEALTH_EVERY, and also fetched again soon after
// a permission request appears or settles: otherwise it went on showing the
// figures of the last poll (pending_agent_requests 0 beside a pending
// request's card) for up to HEALTH_EVERY.
let healthTimer = 0;
let healthBusy = false; // a round is fetching
let healthAgain = false; // something changed while it was: fetch again soon
const HEALTH_SOON = 100;

function healthSoon() {
  if (healthBusy) {
    healthAgain = true;
    return;
  }
  clearTimeout(healthTimer);
  healthTimer = setTimeout(health, HEALTH_SOON);
}

async function health() {
  clearTimeout(healthTimer);
  healthBusy = true;
  healthAgain = false;
  try {
    const h = await (await fetch("/healthz", { cache: "no-store" })).json();
    $("#health").replaceChildren(
      ...pairs({ status: h.status, agent: h.agent?.up ? "up" : "down", "agent restarts": h.agent?.restarts, connections: h.connections, sessions: h.sessions }),
    );
  } catch (e) {
    $("#health").replaceChildren(...pairs({ status: `unreachable (${e.message})` }));
  }
  try {
    const r = await fetch("/metrics", { cache: "no-store" });
    if (r.ok) $("#metrics").replaceChildren(...pairs(metricTotals(await r.text())));
  } catch {
    // The next round retries.
  }
  healthBusy = false;
  healthTimer = setTimeout(health, healthAgain ? HEALTH_SOON : HEALTH_EVERY);
}

function pairs(o) {
  const out = [];
  for (const [k, v] of Object.entries(o)) out.push(el("dt", { text: k }), el("dd", { text: String(v ?? "—") }));
  return out;
}

// metricTotals sums each agentbridge_* series over its labels (histogram
// buckets left out): a glance, not a monitoring system.
function metricTotals(text) {
  const totals = new Map();
  for (const line of text.split("\n")) {
    if (!line.startsWith("agentbridge_")) continue;
    const m = /^([a-z_:]+)(\{[^}]*\})?\s+([-+0-9.eE]+|NaN)/.exec(line);
    if (!m || /_bucket$|_sum$|_count$/.test(m[1])) continue;
    totals.set(m[1], (totals.get(m[1]) ?? 0) + Number(m[3]));
  }
  const out = {};
  for (const [k, v] of [...totals].sort()) out[k.replace(/^agentbridge_/, "")] = Number.isInteger(v) ? v : v.toFixed(3);
  return out;
}

connect();
health();

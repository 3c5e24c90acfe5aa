// agentbridge browser terminal: xterm.js over a WebSocket to /terminal.
// Binary frames carry bytes both ways; the page sends
// {"type":"resize","cols":C,"rows":R} as text and gets small JSON notices
// (hello {mode: write|watch}, degraded, live, exit). A client token writes;
// an operator token watches read-only (?watch=ID picks a terminal). A
// dropped connection re-attaches and gets the screen back from the
// server's scrollback.
import { Terminal } from "/ui/vendor/xterm/xterm.mjs";
import { FitAddon } from "/ui/vendor/addon-fit/addon-fit.mjs";

const $ = (sel) => document.querySelector(sel);
const term = new Terminal({ cursorBlink: true, scrollback: 5000, fontSize: 14, allowProposedApi: false });
const fit = new FitAddon();
term.loadAddon(fit);
term.open($("#term"));
fit.fit();

const state = { mode: null, id: null, connected: false, degraded: false, exited: false, connections: 0, received: 0 };
window.agentbridgeTerm = { term, state };

const enc = new TextEncoder();
let ws = null;
let backoff = 250;

function setConn(s) {
  const c = $("#conn");
  c.dataset.state = s;
  c.textContent = s;
}

function connect() {
  state.exited = false;
  $("#restart").hidden = true;
  const proto = location.protocol === "https:" ? "wss" : "ws";
  const sock = new WebSocket(`${proto}://${location.host}/terminal${location.search}`);
  sock.binaryType = "arraybuffer";
  ws = sock;
  setConn(state.connections ? "reconnecting" : "connecting");
  sock.onopen = () => {
    state.connections++;
    state.connected = true;
    backoff = 250;
    setConn("connected");
  };
  sock.onmessage = (e) => {
    if (typeof e.data === "string") {
      notice(JSON.parse(e.data));
      return;
    }
    const b = new Uint8Array(e.data);
    state.received += b.length;
    term.write(b);
  };
  sock.onclose = (e) => {
    if (ws !== sock) return;
    state.connected = false;
    if (state.exited) {
      setConn("closed");
      $("#restart").hidden = state.mode !== "write";
      return;
    }
    setConn("reconnecting");
    $("#term-note").textContent = e.reason || "";
    setTimeout(connect, backoff);
    backoff = Math.min(backoff * 2, 5000);
  };
}

function notice(n) {
  switch (n.type) {
    case "hello":
      state.mode = n.mode;
      state.id = n.id;
      term.options.disableStdin = n.mode !== "write";
      $("#mode").textContent = n.mode === "write" ? `terminal ${n.id}` : `watching ${n.id} (read-only)`;
      document.body.dataset.mode = n.mode;
      if (n.mode === "write") sendSize();
      break;
    case "degraded":
      state.degraded = true;
      $("#mode").dataset.state = "degraded";
      $("#term-note").textContent = "behind: showing snapshots";
      break;
    case "live":
      state.degraded = false;
      delete $("#mode").dataset.state;
      $("#term-note").textContent = "";
      break;
    case "exit":
      state.exited = true;
      $("#term-note").textContent = n.why ?? "exited";
      break;
  }
}

function sendSize() {
  if (ws?.readyState === WebSocket.OPEN && state.mode === "write") {
    ws.send(JSON.stringify({ type: "resize", cols: term.cols, rows: term.rows }));
  }
}

function type(data) {
  if (ws?.readyState === WebSocket.OPEN && state.mode === "write") ws.send(enc.encode(data));
}

term.onData(type);
term.onBinary((data) => {
  if (ws?.readyState === WebSocket.OPEN && state.mode === "write") ws.send(Uint8Array.from(data, (c) => c.charCodeAt(0)));
});
term.onResize(sendSize);
new ResizeObserver(() => fit.fit()).observe($("#term"));
$("#restart").addEventListener("click", () => {
  term.reset();
  connect();
});
term.focus();
connect();

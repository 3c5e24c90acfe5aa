package loop

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/agentbridge/agentbridge/auth"
	"github.com/agentbridge/agentbridge/codec/ws"
	"github.com/agentbridge/agentbridge/httpfront"
	"github.com/agentbridge/agentbridge/session"
	"github.com/agentbridge/agentbridge/terminal"
	"github.com/agentbridge/agentbridge/tlsserve"
)

const (
	clientToken   = "client-token-0123456789abcdef"
	operatorToken = "operator-token-0123456789abcdef"
	viewerToken   = "viewer-token-0123456789abcdef"
	wait          = 5 * time.Second
)

// echoAgent is an in-process agent: it answers every request with its
// params, "session/new" with a fresh session id, and "emit" {sessionId, n}
// with n session/update notifications before its answer. It never calls the
// hub from Send (the hub holds its lock there).
type echoAgent struct {
	hub      *session.Hub
	ch       chan []byte
	sessions int
}

func newEchoAgent(h *session.Hub) *echoAgent {
	a := &echoAgent{hub: h, ch: make(chan []byte, 4096)}
	go a.run()
	return a
}

func (a *echoAgent) Send(msg []byte) error {
	select {
	case a.ch <- bytes.Clone(msg):
		return nil
	default:
		return errors.New("echo agent: queue full")
	}
}

func (a *echoAgent) run() {
	for msg := range a.ch {
		var m struct {
			ID     json.RawMessage `json:"id"`
			Method string          `json:"method"`
			Params json.RawMessage `json:"params"`
		}
		if json.Unmarshal(msg, &m) != nil || m.Method == "" || m.ID == nil {
			continue
		}
		result := m.Params
		switch m.Method {
		case "session/new":
			a.sessions++
			result = json.RawMessage(fmt.Sprintf(`{"sessionId":"s%d"}`, a.sessions))
		case "emit":
			var p struct {
				SessionID string `json:"sessionId"`
				N         int    `json:"n"`
			}
			_ = json.Unmarshal(m.Params, &p)
			sid, _ := json.Marshal(p.SessionID)
			for i := 1; i <= p.N; i++ {
				a.hub.AgentMessage(1, []byte(fmt.Sprintf(`{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":%s,"update":{"i":%d}}}`, sid, i)))
			}
			result = json.RawMessage(fmt.Sprintf(`{"sent":%d}`, p.N))
		}
		if len(result) == 0 {
			result = json.RawMessage("null")
		}
		a.hub.AgentMessage(1, []byte(fmt.Sprintf(`{"jsonrpc":"2.0","id":%s,"result":%s}`, m.ID, result)))
	}
}

// env is a running loop server with an echo agent.
type env struct {
	srv  *Server
	hub  *session.Hub
	addr string
	m    *Metrics
}

type envOpt func(*Config)

func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func testTokens(t *testing.T) *auth.Tokens {
	t.Helper()
	tok, err := auth.NewTokens([]auth.Grant{
		{Role: auth.RoleClient, Token: clientToken},
		{Role: auth.RoleOperator, Token: operatorToken},
		{Role: auth.RoleViewer, Token: viewerToken},
	})
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// HTTPConfig is what a test asks of the TCP listener: the front's
// settings and, with TLSCert and TLSKey, the TLS listener beside the event
// loop (as cmd starts them: the loop then has no TCP listener of its own).
type HTTPConfig struct {
	Tokens                                              *auth.Tokens
	Origins                                             *auth.OriginPolicy
	Heartbeat, HeaderTimeout, IdleTimeout, CloseTimeout time.Duration
	HTTPIdle                                            time.Duration
	Terminal                                            *terminal.Manager
	TLSCert, TLSKey                                     string
}

// startEnv starts a server on a free loopback port (gnet needs a concrete
// one) with the given HTTP configuration; tokens default to testTokens.
func startEnv(t *testing.T, hc HTTPConfig, opts ...envOpt) *env {
	t.Helper()
	hub := session.New(session.Config{Logger: slog.New(slog.DiscardHandler)})
	hub.SetAgent(newEchoAgent(hub))
	hub.AgentStarted(1)
	if hc.Tokens == nil {
		hc.Tokens = testTokens(t)
	}
	m := NewMetrics(nil)
	cfg := Config{Listen: freePort(t), Hub: hub, Loops: 1, Metrics: m,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	if testing.Verbose() {
		cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	for _, o := range opts {
		o(&cfg)
	}
	hm := m.HTTP(hub, cfg.Logger)
	hf, err := httpfront.New(httpfront.Config{Hub: hub, Metrics: hm, Scrape: hm.Scrape(), Logger: cfg.Logger,
		Endpoint: hm.Endpoint(hub, cfg.Delivery, cfg.Rate),
		Tokens:   hc.Tokens, Origins: hc.Origins, Heartbeat: hc.Heartbeat, HeaderTimeout: hc.HeaderTimeout,
		IdleTimeout: hc.IdleTimeout, CloseTimeout: hc.CloseTimeout, HTTPIdle: hc.HTTPIdle, Terminal: hc.Terminal})
	if err != nil {
		t.Fatal(err)
	}
	cfg.Front = hf
	tlsOn := hc.TLSCert != ""
	addr := cfg.Listen
	if tlsOn {
		cfg.Listen = ""
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	e := &env{srv: srv, hub: hub, addr: addr, m: m}
	var ts *tlsserve.Server
	if tlsOn {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		fc := hf.Config()
		ts, err = tlsserve.New(tlsserve.Config{Listener: srv.Limit(ln), CertFile: hc.TLSCert, KeyFile: hc.TLSKey,
			Hub: hub, Front: hf, Delivery: cfg.Delivery, Rate: cfg.Rate, MaxMessage: cfg.MaxMessage,
			MaxHeaderBytes: fc.MaxHeaderBytes, Heartbeat: fc.Heartbeat, HeaderTimeout: fc.HeaderTimeout,
			IdleTimeout: fc.IdleTimeout, CloseTimeout: fc.CloseTimeout, Logger: cfg.Logger, Metrics: hm, OutboxMetrics: hm.Outbox})
		if err != nil {
			t.Fatal(err)
		}
		if err := ts.Start(); err != nil {
			t.Fatal(err)
		}
		e.addr = ts.Addr().String()
	}
	t.Cleanup(func() {
		hub.Shutdown("test over")
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if ts != nil {
			_ = ts.Stop(ctx)
		}
		_ = srv.Stop(ctx)
		hf.Close()
	})
	return e
}

// got is a received frame with its payload copied out of the Reader.
type got struct {
	kind    ws.EventKind
	payload string
	code    ws.CloseCode
}

// wsc is a raw WebSocket client: it writes exactly the bytes a test gives
// it and parses what the server sends with the codec's Reader.
type wsc struct {
	t       *testing.T
	c       net.Conn
	br      *bufio.Reader
	r       ws.Reader
	pending []byte
	key     [4]byte
}

// handshake sends a GET for path with the given extra header lines and
// returns the response and a reader positioned after its header.
func handshake(t *testing.T, addr, path string, hdr ...string) (net.Conn, *bufio.Reader, *http.Response) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, wait)
	if err != nil {
		t.Fatal(err)
	}
	return handshakeOn(t, c, addr, path, hdr...)
}

// handshakeOn is handshake over a connection already made (say TLS).
func handshakeOn(t *testing.T, c net.Conn, addr, path string, hdr ...string) (net.Conn, *bufio.Reader, *http.Response) {
	t.Helper()
	t.Cleanup(func() { c.Close() })
	var b bytes.Buffer
	fmt.Fprintf(&b, "GET %s HTTP/1.1\r\nHost: %s\r\n", path, addr)
	for i := 0; i+1 < len(hdr); i += 2 {
		fmt.Fprintf(&b, "%s: %s\r\n", hdr[i], hdr[i+1])
	}
	b.WriteString("\r\n")
	if _, err := c.Write(b.Bytes()); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(wait))
	br := bufio.NewReaderSize(c, 64<<10)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("reading the handshake response: %v", err)
	}
	return c, br, resp
}

var upgradeHeaders = []string{"Upgrade", "websocket", "Connection", "Upgrade",
	"Sec-WebSocket-Version", "13", "Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="}

func hdrs(extra ...string) []string { return append(append([]string{}, upgradeHeaders...), extra...) }

// dialWS upgrades with the client token unless other headers are given.
func dialWS(t *testing.T, addr string, extra ...string) *wsc {
	t.Helper()
	if len(extra) == 0 {
		extra = []string{"Authorization", "Bearer " + clientToken}
	}
	c, br, resp := handshake(t, addr, "/acp", hdrs(extra...)...)
	return upgraded(t, c, br, resp)
}

// dialWSS is dialWS over TLS, with the client token.
func dialWSS(t *testing.T, addr string, pool *x509.CertPool) *wsc {
	t.Helper()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: wait}, "tcp", addr, &tls.Config{RootCAs: pool})
	if err != nil {
		t.Fatal(err)
	}
	tc, br, resp := handshakeOn(t, c, addr, "/acp", hdrs("Authorization", "Bearer "+clientToken)...)
	return upgraded(t, tc, br, resp)
}

// upgraded checks a handshake's 101 and wraps its connection.
func upgraded(t *testing.T, c net.Conn, br *bufio.Reader, resp *http.Response) *wsc {
	t.Helper()
	if resp.StatusCode != http.StatusSwitchingProtocols {
		body, _ := io.ReadAll(resp.Body)
		t.Fatalf("handshake: %s %s", resp.Status, body)
	}
	if got, want := resp.Header.Get("Sec-WebSocket-Accept"), ws.AcceptKey("dGhlIHNhbXBsZSBub25jZQ=="); got != want {
		t.Fatalf("Sec-WebSocket-Accept = %q, want %q", got, want)
	}
	w := &wsc{t: t, c: c, br: br, key: [4]byte{1, 2, 3, 4}}
	w.r.MaxMessage = 64 << 20
	return w
}

// frame builds a masked client frame.
func (w *wsc) frame(fin bool, op ws.Opcode, payload []byte) []byte {
	return ws.AppendMaskedFrame(nil, fin, op, w.key, payload)
}

func (w *wsc) write(b ...[]byte) {
	w.t.Helper()
	_ = w.c.SetWriteDeadline(time.Now().Add(wait))
	if _, err := w.c.Write(bytes.Join(b, nil)); err != nil {
		w.t.Fatalf("write: %v", err)
	}
}

func (w *wsc) text(s string) { w.write(w.frame(true, ws.OpText, []byte(s))) }

// next returns the next frame (or reassembled message) from the server.
func (w *wsc) next(d time.Duration) (got, error) {
	_ = w.c.SetReadDeadline(time.Now().Add(d))
	buf := make([]byte, 64<<10)
	for {
		if len(w.pending) > 0 {
			ev, n, err := w.r.Next(w.pending)
			w.pending = w.pending[n:]
			if err != nil {
				return got{}, err
			}
			if ev.Kind != ws.EventNone {
				return got{kind: ev.Kind, payload: string(ev.Payload), code: ev.CloseCode}, nil
			}
		}
		n, err := w.br.Read(buf)
		w.pending = append(w.pending, buf[:n]...)
		if err != nil && n == 0 {
			return got{}, err
		}
	}
}

func (w *wsc) mustNext(d time.Duration) got {
	w.t.Helper()
	g, err := w.next(d)
	if err != nil {
		w.t.Fatalf("reading a frame: %v", err)
	}
	return g
}

// call sends a JSON-RPC request and returns the response with its id,
// skipping notifications.
func (w *wsc) call(id int, method string, params any) map[string]any {
	w.t.Helper()
	p, _ := json.Marshal(params)
	w.text(fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"method":%q,"params":%s}`, id, method, p))
	return w.response(id)
}

func (w *wsc) response(id int) map[string]any {
	w.t.Helper()
	for {
		g := w.mustNext(wait)
		if g.kind == ws.EventPing {
			w.write(w.frame(true, ws.OpPong, []byte(g.payload)))
			continue
		}
		if g.kind != ws.EventText {
			w.t.Fatalf("waiting for response %d: got %v %q", id, g.kind, g.payload)
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(g.payload), &m); err != nil {
			w.t.Fatalf("response is not JSON: %v: %.200q", err, g.payload)
		}
		if _, isNote := m["method"]; isNote {
			continue
		}
		if m["id"] == float64(id) {
			return m
		}
	}
}

// expectClose reads until a close frame with code arrives, then expects
// the server to end the TCP stream.
func (w *wsc) expectClose(code ws.CloseCode) got {
	w.t.Helper()
	for {
		g, err := w.next(wait)
		if err != nil {
			w.t.Fatalf("waiting for close %d: %v", code, err)
		}
		if g.kind == ws.EventClose {
			if g.code != code {
				w.t.Fatalf("close code = %d (%q), want %d", g.code, g.payload, code)
			}
			w.expectEOF()
			return g
		}
	}
}

// expectEOF expects the server to end the stream (FIN or close) soon.
func (w *wsc) expectEOF() {
	w.t.Helper()
	_ = w.c.SetReadDeadline(time.Now().Add(wait))
	buf := make([]byte, 4096)
	for {
		_, err := w.br.Read(buf)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				w.t.Fatalf("the server did not end the stream within %s", wait)
			}
			return
		}
	}
}

func errCode(m map[string]any) int {
	e, _ := m["error"].(map[string]any)
	c, _ := e["code"].(float64)
	return int(c)
}

// writeCert makes a self-signed ECDSA certificate for 127.0.0.1 and
// localhost and writes it and its key as PEM files in a temp dir.
func writeCert(t *testing.T) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: "agentbridge test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
		DNSNames:              []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}

// metricValue reads one sample from the registry, 0 when absent.
func metricValue(t *testing.T, m *Metrics, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, s := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, lp := range s.GetLabel() {
					if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
						found = true
					}
				}
				if !found {
					continue next
				}
			}
			switch {
			case s.Counter != nil:
				return s.Counter.GetValue()
			case s.Gauge != nil:
				return s.Gauge.GetValue()
			}
		}
	}
	return 0
}

// eventually polls cond until it holds or wait passes; for state the test
// cannot be told about (a counter), never as a stand-in for a message.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, wait)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// certPool trusts the certificate in certFile.
func certPool(t *testing.T, certFile string) *x509.CertPool {
	t.Helper()
	b, err := os.ReadFile(certFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		t.Fatal("no certificate in " + certFile)
	}
	return pool
}

package tlsserve

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
	"encoding/binary"
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
	"strings"
	"testing"
	"time"

	"github.com/agentbridge/agentbridge/auth"
	"github.com/agentbridge/agentbridge/codec/ws"
	"github.com/agentbridge/agentbridge/session"
)

const wait = 5 * time.Second

// front authorises every /acp request as a client unless it carries
// "X-Refuse", and answers everything else with 404.
type front struct{}

func (front) Authorize(w http.ResponseWriter, r *http.Request) (auth.Role, string, string, bool) {
	if r.Header.Get("X-Refuse") != "" {
		http.Error(w, "refused", http.StatusUnauthorized)
		return 0, "", "", false
	}
	return auth.RoleClient, r.Header.Get("X-Select"), "X-Conn: " + r.Header.Get("X-Select") + "-1\r\n", true
}

func (front) ServeHTTP(w http.ResponseWriter, r *http.Request) { http.NotFound(w, r) }

// echo answers each request with its raw params, asynchronously (the hub
// must not be called back from Send).
type echo struct {
	hub *session.Hub
	ch  chan []byte
}

func (a *echo) Send(msg []byte) error {
	a.ch <- bytes.Clone(msg)
	return nil
}

func (a *echo) run() {
	for msg := range a.ch {
		i := bytes.Index(msg, []byte(`"id":`))
		j := bytes.IndexByte(msg[i:], ',')
		a.hub.AgentMessage(1, []byte(fmt.Sprintf(`{"jsonrpc":"2.0","id":%s,"result":"ok"}`, msg[i+5:i+j])))
	}
}

func certFiles(t *testing.T) (string, string, *x509.CertPool) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalECPrivateKey(key)
	dir := t.TempDir()
	cf, kf := filepath.Join(dir, "c.pem"), filepath.Join(dir, "k.pem")
	os.WriteFile(cf, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(kf, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600)
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return cf, kf, pool
}

type testServer struct {
	s    *Server
	hub  *session.Hub
	pool *x509.CertPool
	addr string
}

func start(t *testing.T, cfg Config) *testServer {
	t.Helper()
	hub := session.New(session.Config{Logger: slog.New(slog.DiscardHandler)})
	a := &echo{hub: hub, ch: make(chan []byte, 1024)}
	go a.run()
	hub.SetAgent(a)
	hub.AgentStarted(1)
	cf, kf, pool := certFiles(t)
	cfg.Addr, cfg.CertFile, cfg.KeyFile, cfg.Hub, cfg.Front = "127.0.0.1:0", cf, kf, hub, front{}
	cfg.Logger = slog.New(slog.DiscardHandler)
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		hub.Shutdown("test over")
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		_ = s.Stop(ctx)
	})
	return &testServer{s: s, hub: hub, pool: pool, addr: s.Addr().String()}
}

// peer is a raw TLS WebSocket client.
type peer struct {
	t       *testing.T
	c       *tls.Conn
	br      *bufio.Reader
	r       ws.Reader
	pending []byte
}

func (ts *testServer) dial(t *testing.T, hdr ...string) (*peer, *http.Response) {
	t.Helper()
	c, err := tls.Dial("tcp", ts.addr, &tls.Config{RootCAs: ts.pool})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	var b strings.Builder
	fmt.Fprintf(&b, "GET /acp HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", ts.addr)
	for i := 0; i+1 < len(hdr); i += 2 {
		fmt.Fprintf(&b, "%s: %s\r\n", hdr[i], hdr[i+1])
	}
	b.WriteString("\r\n")
	io.WriteString(c, b.String())
	_ = c.SetReadDeadline(time.Now().Add(wait))
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	return &peer{t: t, c: c, br: br}, resp
}

func (p *peer) send(op ws.Opcode, payload []byte) {
	p.t.Helper()
	if _, err := p.c.Write(ws.AppendMaskedFrame(nil, true, op, [4]byte{9, 8, 7, 6}, payload)); err != nil {
		p.t.Fatal(err)
	}
}

func (p *peer) next() (ws.Event, error) {
	_ = p.c.SetReadDeadline(time.Now().Add(wait))
	buf := make([]byte, 4096)
	for {
		if len(p.pending) > 0 {
			ev, n, err := p.r.Next(p.pending)
			p.pending = p.pending[n:]
			if err != nil || ev.Kind != ws.EventNone {
				ev.Payload = bytes.Clone(ev.Payload)
				return ev, err
			}
		}
		n, err := p.br.Read(buf)
		if n == 0 && err != nil {
			return ws.Event{}, err
		}
		p.pending = append(p.pending, buf[:n]...)
	}
}

func (p *peer) expect(kind ws.EventKind) ws.Event {
	p.t.Helper()
	ev, err := p.next()
	if err != nil || ev.Kind != kind {
		p.t.Fatalf("got %v %q (%v), want %v", ev.Kind, ev.Payload, err, kind)
	}
	return ev
}

func (p *peer) expectEOF() {
	p.t.Helper()
	_ = p.c.SetReadDeadline(time.Now().Add(wait))
	_, err := io.Copy(io.Discard, p.br)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		p.t.Fatal("connection not closed")
	}
}

func TestServer(t *testing.T) {
	ts := start(t, Config{Heartbeat: time.Minute, CloseTimeout: 300 * time.Millisecond})

	t.Run("refused by the front", func(t *testing.T) {
		_, resp := ts.dial(t, "X-Refuse", "1")
		if resp.StatusCode != 401 {
			t.Fatalf("status %s", resp.Status)
		}
	})
	t.Run("subprotocol selected", func(t *testing.T) {
		_, resp := ts.dial(t, "Sec-WebSocket-Protocol", "a, b", "X-Select", "b")
		if resp.StatusCode != 101 || resp.Header.Get("Sec-WebSocket-Protocol") != "b" {
			t.Fatalf("%s %v", resp.Status, resp.Header)
		}
		// The front's header line for this connection is on the 101.
		if got := resp.Header.Get("X-Conn"); got != "b-1" {
			t.Fatalf("X-Conn %q in %v", got, resp.Header)
		}
	})
	t.Run("request, ping, close echo", func(t *testing.T) {
		p, resp := ts.dial(t)
		if resp.StatusCode != 101 {
			t.Fatalf("status %s", resp.Status)
		}
		p.send(ws.OpText, []byte(`{"jsonrpc":"2.0","id":41,"method":"x"}`))
		if ev := p.expect(ws.EventText); string(ev.Payload) != `{"jsonrpc":"2.0","id":41,"result":"ok"}` {
			t.Fatalf("answer %q", ev.Payload)
		}
		p.send(ws.OpPing, []byte("hb"))
		if ev := p.expect(ws.EventPong); string(ev.Payload) != "hb" {
			t.Fatalf("pong %q", ev.Payload)
		}
		p.send(ws.OpClose, binary.BigEndian.AppendUint16(nil, 1000))
		if ev := p.expect(ws.EventClose); ev.CloseCode != 1000 {
			t.Fatalf("close echo %d", ev.CloseCode)
		}
		p.expectEOF()
	})
	t.Run("our close waits for the answer", func(t *testing.T) {
		p, _ := ts.dial(t)
		p.send(ws.OpText, []byte(`{"jsonrpc":"2.0","id":1,"method":"x"}`))
		p.expect(ws.EventText)
		ts.hub.Shutdown("bye")
		if ev := p.expect(ws.EventClose); ev.CloseCode != ws.CloseGoingAway || string(ev.Payload) != "bye" {
			t.Fatalf("close %d %q", ev.CloseCode, ev.Payload)
		}
		p.send(ws.OpClose, binary.BigEndian.AppendUint16(nil, 1001))
		// The server's echo is dropped (its close frame is already out):
		// the next thing is the end of the stream.
		p.expectEOF()
	})
}

func TestServerUnansweredClose(t *testing.T) {
	ts := start(t, Config{Heartbeat: time.Minute, CloseTimeout: 200 * time.Millisecond})
	p, _ := ts.dial(t)
	p.send(ws.OpText, []byte(`{"jsonrpc":"2.0","id":1,"method":"x"}`))
	p.expect(ws.EventText)
	ts.hub.Shutdown("bye")
	p.expect(ws.EventClose)
	start := time.Now()
	p.expectEOF()
	if d := time.Since(start); d < 100*time.Millisecond {
		t.Fatalf("closed after %s, without waiting for the peer's close", d)
	}
	deadline := time.Now().Add(wait)
	for ts.s.Connections() != 0 {
		if time.Now().After(deadline) {
			t.Fatal("connection still counted")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestFailureClose(t *testing.T) {
	for _, tc := range []struct {
		code uint16
		want bool
	}{{1000, false}, {1001, false}, {3000, false}, {4999, false}, {1002, true}, {1007, true}, {1009, true}, {1011, true}} {
		f := ws.AppendClose(nil, ws.CloseCode(tc.code), "")
		if got := failureClose(f); got != tc.want {
			t.Errorf("failureClose(%d) = %v, want %v", tc.code, got, tc.want)
		}
	}
	if failureClose(ws.AppendClose(nil, ws.CloseNoStatus, "")) {
		t.Error("an empty close frame is not a failure")
	}
}

func TestNewBadCertificate(t *testing.T) {
	_, err := New(Config{Addr: "127.0.0.1:0", CertFile: "/nonexistent/c.pem", KeyFile: "/nonexistent/k.pem", Hub: session.New(session.Config{}), Front: front{}})
	if err == nil || !strings.Contains(err.Error(), "/nonexistent/c.pem") {
		t.Fatalf("error %v does not name the file", err)
	}
	if _, err := New(Config{}); !errors.Is(err, ErrIncomplete) {
		t.Fatalf("error %v, want ErrIncomplete", err)
	}
}

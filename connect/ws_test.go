package connect

import (
	"bufio"
	"context"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lxzan/gws"
)

const wait = 5 * time.Second

// daemon is a gws stand-in for agentbridge's /acp: it checks the bearer
// token, answers each request {id, method, params} with {id, result:
// method}, and can drop a connection after its first answer. It resumes
// as the real daemon does for requests answered at once: the count of
// messages the previous connection with the key had read, nothing pending.
type daemon struct {
	gws.BuiltinEventHandler
	srv       *httptest.Server
	up        *gws.Upgrader
	conns     atomic.Int32
	dropFirst bool
	delay     time.Duration

	mu       sync.Mutex
	received map[string]*atomic.Int64 // by resume key: the latest connection's count
}

func newDaemon(t *testing.T, useTLS bool) *daemon {
	d := &daemon{received: map[string]*atomic.Int64{}}
	d.up = gws.NewUpgrader(d, &gws.ServerOption{})
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/acp" {
			http.NotFound(w, r)
			return
		}
		if r.Header.Get("Authorization") != "Bearer good-token" {
			http.Error(w, "token rejected", http.StatusUnauthorized)
			return
		}
		socket, err := d.up.Upgrade(w, r)
		if err != nil {
			return
		}
		socket.Session().Store("n", d.conns.Add(1))
		socket.Session().Store("received", new(atomic.Int64))
		go socket.ReadLoop()
	})
	if useTLS {
		d.srv = httptest.NewTLSServer(h)
	} else {
		d.srv = httptest.NewServer(h)
	}
	t.Cleanup(d.srv.Close)
	return d
}

func (d *daemon) url(scheme string) string {
	return scheme + "://" + strings.TrimPrefix(strings.TrimPrefix(d.srv.URL, "http://"), "https://") + "/acp"
}

func (d *daemon) OnMessage(socket *gws.Conn, m *gws.Message) {
	var req struct {
		ID     json.RawMessage `json:"id"`
		Method string          `json:"method"`
		Params struct {
			Resume string `json:"resume"`
		} `json:"params"`
	}
	_ = json.Unmarshal(m.Bytes(), &req)
	m.Close()
	v, _ := socket.Session().Load("received")
	count := v.(*atomic.Int64)
	count.Add(1)
	if req.ID == nil {
		return
	}
	if req.Method == "bridge/hello" {
		d.mu.Lock()
		prev := d.received[req.Params.Resume]
		d.received[req.Params.Resume] = count
		d.mu.Unlock()
		resume := `{"resumed":false,"received":0,"pending":[]}`
		if prev != nil {
			resume = fmt.Sprintf(`{"resumed":true,"received":%d,"pending":[]}`, prev.Load())
		}
		_ = socket.WriteString(`{"jsonrpc":"2.0","id":` + string(req.ID) + `,"result":{"version":"fake","connectionId":1,"role":"client","envelope":true,"resume":` + resume + `}}`)
		return
	}
	answer := func() {
		_ = socket.WriteString(`{"jsonrpc":"2.0","id":` + string(req.ID) + `,"result":"` + req.Method + `"}`)
		if n, _ := socket.Session().Load("n"); d.dropFirst && n.(int32) == 1 {
			socket.NetConn().Close()
		}
	}
	if d.delay > 0 {
		time.AfterFunc(d.delay, answer)
		return
	}
	answer()
}

// piped runs Run with piped stdio, parsing what it writes.
type piped struct {
	stdin  *io.PipeWriter
	lines  chan map[string]any
	result chan error
}

func runShim(t *testing.T, o Options) *piped {
	t.Helper()
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	s := &piped{stdin: inW, lines: make(chan map[string]any, 100), result: make(chan error, 1)}
	o.Stdin, o.Stdout = inR, outW
	o.Logger = slog.New(slog.DiscardHandler)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go func() {
		s.result <- Run(ctx, o)
		outW.Close()
	}()
	go func() {
		sc := bufio.NewScanner(outR)
		for sc.Scan() {
			var m map[string]any
			if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
				m = map[string]any{"_invalid": sc.Text()}
			}
			s.lines <- m
		}
		close(s.lines)
	}()
	return s
}

func (s *piped) send(t *testing.T, line string) {
	t.Helper()
	if _, err := io.WriteString(s.stdin, line+"\n"); err != nil {
		t.Fatal(err)
	}
}

func (s *piped) expect(t *testing.T, id float64, result string) {
	t.Helper()
	select {
	case m, ok := <-s.lines:
		if !ok {
			t.Fatalf("stdout ended before answer %v: %v", id, <-s.result)
		}
		if m["id"] != id || m["result"] != result {
			t.Fatalf("got %v, want id %v result %q", m, id, result)
		}
	case <-time.After(wait):
		t.Fatalf("no answer %v", id)
	}
}

func (s *piped) done(t *testing.T) error {
	t.Helper()
	select {
	case err := <-s.result:
		return err
	case <-time.After(wait):
		t.Fatal("Run did not return")
	}
	return nil
}

func TestWSRelay(t *testing.T) {
	d := newDaemon(t, false)
	d.delay = 50 * time.Millisecond // answers arrive after stdin has ended
	s := runShim(t, Options{URL: d.url("ws"), Token: "good-token"})
	s.send(t, `{"jsonrpc":"2.0","id":1,"method":"a"}`)
	s.send(t, `{"jsonrpc":"2.0","method":"note"}`)
	s.send(t, `{"jsonrpc":"2.0","id":2,"method":"b"}`)
	s.stdin.Close()
	got := map[float64]any{}
	for range 2 {
		select {
		case m := <-s.lines:
			got[m["id"].(float64)] = m["result"]
		case <-time.After(wait):
			t.Fatalf("answers so far: %v", got)
		}
	}
	if got[1] != "a" || got[2] != "b" {
		t.Fatalf("answers %v", got)
	}
	if err := s.done(t); err != nil {
		t.Fatalf("Run: %v", err)
	}
}

func TestWSTokenFromEnvironment(t *testing.T) {
	d := newDaemon(t, false)
	t.Setenv("AGENTBRIDGE_TOKEN", "good-token")
	s := runShim(t, Options{URL: d.url("ws")})
	s.send(t, `{"jsonrpc":"2.0","id":1,"method":"a"}`)
	s.expect(t, 1, "a")
	s.stdin.Close()
	if err := s.done(t); err != nil {
		t.Fatal(err)
	}
}

func TestWSReconnect(t *testing.T) {
	d := newDaemon(t, false)
	d.dropFirst = true
	s := runShim(t, Options{URL: d.url("ws"), Token: "good-token"})
	s.send(t, `{"jsonrpc":"2.0","id":1,"method":"a"}`)
	s.expect(t, 1, "a")
	// The daemon dropped the connection after that answer; this request
	// goes out on the next one.
	s.send(t, `{"jsonrpc":"2.0","id":2,"method":"b"}`)
	s.expect(t, 2, "b")
	s.stdin.Close()
	if err := s.done(t); err != nil {
		t.Fatal(err)
	}
	if n := d.conns.Load(); n != 2 {
		t.Fatalf("%d connections, want 2", n)
	}
}

func TestWSErrors(t *testing.T) {
	d := newDaemon(t, false)
	tlsd := newDaemon(t, true)
	free, _ := net.Listen("tcp", "127.0.0.1:0")
	refused := "ws://" + free.Addr().String() + "/acp"
	free.Close()

	caFile := filepath.Join(t.TempDir(), "ca.pem")
	os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: tlsd.srv.Certificate().Raw}), 0o600)
	notPEM := filepath.Join(t.TempDir(), "x.pem")
	os.WriteFile(notPEM, []byte("hello"), 0o600)

	for _, tc := range []struct {
		name string
		o    Options
		want string
	}{
		{"token rejected", Options{URL: d.url("ws"), Token: "bad"}, "token rejected"},
		{"no token", Options{URL: d.url("ws")}, "requires a token"},
		{"refused", Options{URL: refused, Token: "good-token"}, "no daemon listening at ws://"},
		{"wrong path", Options{URL: strings.TrimSuffix(d.url("ws"), "/acp") + "/x", Token: "good-token"}, "no WebSocket endpoint"},
		{"unknown authority", Options{URL: tlsd.url("wss"), Token: "good-token"}, "unknown authority; pass its CA"},
		{"plain server, wss URL", Options{URL: d.url("wss"), Token: "good-token"}, "does not speak TLS"},
		{"ca not PEM", Options{URL: tlsd.url("wss"), Token: "good-token", CA: notPEM}, "holds no PEM certificate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.name == "no token" {
				t.Setenv("AGENTBRIDGE_TOKEN", "")
			}
			s := runShim(t, tc.o)
			err := s.done(t)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want it to say %q", err, tc.want)
			}
		})
	}
	t.Run("wss with --ca", func(t *testing.T) {
		s := runShim(t, Options{URL: tlsd.url("wss"), Token: "good-token", CA: caFile})
		s.send(t, `{"jsonrpc":"2.0","id":"x","method":"a"}`)
		select {
		case m := <-s.lines:
			if m["id"] != "x" {
				t.Fatalf("got %v", m)
			}
		case <-time.After(wait):
			t.Fatal("no answer over wss")
		}
		s.stdin.Close()
		if err := s.done(t); err != nil {
			t.Fatal(err)
		}
	})
}

func TestWSErrorsNeverShowTokens(t *testing.T) {
	d := newDaemon(t, false)
	s := runShim(t, Options{URL: d.url("ws") + "?token=secret-in-url"})
	err := s.done(t)
	if err == nil || strings.Contains(err.Error(), "secret-in-url") {
		t.Fatalf("error %q shows the token", err)
	}
	if !strings.Contains(err.Error(), "token=REDACTED") {
		t.Fatalf("error %q does not show where it connected", err)
	}
}

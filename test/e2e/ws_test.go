package e2e

import (
	"bufio"
	"bytes"
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
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lxzan/gws"
)

const (
	e2eClientToken = "e2e-client-token-0123456789"
	e2eViewerToken = "e2e-viewer-token-0123456789"
)

// freeAddr picks a free loopback port: gnet needs a concrete one.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// netDaemon starts serve with --listen on a free port and a tokens file
// holding a client and a viewer token.
func netDaemon(t *testing.T, args ...string) *daemon {
	t.Helper()
	tokens := filepath.Join(t.TempDir(), "tokens")
	content := "# e2e tokens\nclient " + e2eClientToken + "\nviewer " + e2eViewerToken + "\n"
	if err := os.WriteFile(tokens, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return startDaemon(t, append([]string{"--listen", anyPort, "--tokens", tokens}, args...)...)
}

// wsPeer is a gws client speaking JSON-RPC over /acp.
type wsPeer struct {
	gws.BuiltinEventHandler
	t      *testing.T
	socket *gws.Conn
	msgs   chan map[string]any
	closed chan error
}

func (p *wsPeer) OnMessage(_ *gws.Conn, m *gws.Message) {
	var v map[string]any
	if err := json.Unmarshal(m.Bytes(), &v); err != nil {
		v = map[string]any{"_invalid": string(m.Bytes())}
	}
	m.Close()
	p.msgs <- v
}

func (p *wsPeer) OnClose(_ *gws.Conn, err error) { p.closed <- err }

func dialPeer(t *testing.T, url string, conf *tls.Config, hdr ...string) (*wsPeer, *http.Response, error) {
	t.Helper()
	p := &wsPeer{t: t, msgs: make(chan map[string]any, 10000), closed: make(chan error, 1)}
	h := http.Header{}
	for i := 0; i+1 < len(hdr); i += 2 {
		h.Set(hdr[i], hdr[i+1])
	}
	socket, resp, err := gws.NewClient(p, &gws.ClientOption{Addr: url, RequestHeader: h, TlsConfig: conf, ReadMaxPayloadSize: 32 << 20})
	if err != nil {
		return nil, resp, err
	}
	p.socket = socket
	go socket.ReadLoop()
	t.Cleanup(func() { socket.NetConn().Close() })
	return p, resp, nil
}

func (p *wsPeer) send(v map[string]any) {
	p.t.Helper()
	v["jsonrpc"] = "2.0"
	b, _ := json.Marshal(v)
	if err := p.socket.WriteMessage(gws.OpcodeText, b); err != nil {
		p.t.Fatalf("write: %v", err)
	}
}

// waitFor returns the first message matching, with those before it.
func (p *wsPeer) waitFor(what string, match func(map[string]any) bool) (map[string]any, []map[string]any) {
	p.t.Helper()
	var before []map[string]any
	timeout := time.After(wait)
	for {
		select {
		case m := <-p.msgs:
			if match(m) {
				return m, before
			}
			before = append(before, m)
		case err := <-p.closed:
			p.t.Fatalf("closed while waiting for %s: %v", what, err)
		case <-timeout:
			p.t.Fatalf("no %s within %s (saw %s)", what, wait, brief(before))
		}
	}
}

func (p *wsPeer) call(id any, method string, params any) (map[string]any, []map[string]any) {
	p.t.Helper()
	p.send(map[string]any{"id": id, "method": method, "params": params})
	want, _ := json.Marshal(id)
	return p.waitFor("response "+string(want), func(m map[string]any) bool {
		got, _ := json.Marshal(m["id"])
		_, isReq := m["method"]
		return !isReq && bytes.Equal(got, want)
	})
}

func TestWSDemoAgentPromptOverGWS(t *testing.T) {
	t.Parallel()
	d := netDaemon(t)
	p, _, err := dialPeer(t, "ws://"+d.listen+"/acp", nil, "Authorization", "Bearer "+e2eClientToken)
	if err != nil {
		t.Fatal(err)
	}
	if res, _ := p.call(1, "initialize", map[string]any{"protocolVersion": 1, "clientCapabilities": map[string]any{}}); field(res, "result", "protocolVersion") == nil {
		t.Fatalf("initialize: %v", res)
	}
	res, _ := p.call(2, "session/new", map[string]any{"cwd": "/tmp", "mcpServers": []any{}})
	sid, _ := field(res, "result", "sessionId").(string)
	if sid == "" {
		t.Fatalf("session/new: %v", res)
	}
	p.send(map[string]any{"id": 3, "method": "session/prompt", "params": map[string]any{"sessionId": sid, "prompt": []any{map[string]any{"type": "text", "text": "hi"}}}})
	perm, before := p.waitFor("permission request", func(m map[string]any) bool { return m["method"] == "session/request_permission" })
	allow := ""
	opts, _ := field(perm, "params", "options").([]any)
	for _, o := range opts {
		if om, _ := o.(map[string]any); strings.HasPrefix(fmt.Sprint(om["kind"]), "allow") {
			allow, _ = om["optionId"].(string)
		}
	}
	p.send(map[string]any{"id": perm["id"], "result": map[string]any{"outcome": map[string]any{"outcome": "selected", "optionId": allow}}})
	done, after := p.waitFor("prompt result", func(m map[string]any) bool { return m["id"] == float64(3) })
	if field(done, "result", "stopReason") != "end_turn" {
		t.Fatalf("prompt: %v", done)
	}
	chunks := 0
	for _, m := range append(before, after...) {
		if field(m, "params", "update", "sessionUpdate") == "agent_message_chunk" {
			chunks++
		}
	}
	if chunks == 0 {
		t.Fatal("no agent_message_chunk over the WebSocket")
	}
}

func TestWSAuth(t *testing.T) {
	t.Parallel()
	d := netDaemon(t, fakeAgentCmd()...)
	url := "ws://" + d.listen + "/acp"
	for _, tc := range []struct {
		name   string
		url    string
		hdr    []string
		status int
	}{
		{"no token", url, nil, 401},
		{"wrong token", url, []string{"Authorization", "Bearer wrong-token-0000000000"}, 401},
		{"foreign origin", url, []string{"Authorization", "Bearer " + e2eClientToken, "Origin", "https://evil.example"}, 403},
		{"bearer", url, []string{"Authorization", "Bearer " + e2eClientToken}, 101},
		{"subprotocol", url, []string{"Sec-WebSocket-Protocol", "agentbridge.token." + e2eClientToken}, 101},
		{"query", url + "?token=" + e2eClientToken, nil, 101},
		{"cookie", url, []string{"Cookie", "agentbridge_token=" + e2eClientToken}, 101},
		{"same origin", url, []string{"Authorization", "Bearer " + e2eClientToken, "Origin", "http://" + d.listen}, 101},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, resp, err := dialPeer(t, tc.url, nil, tc.hdr...)
			if tc.status == 101 {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if err == nil || resp == nil || resp.StatusCode != tc.status {
				t.Fatalf("got %v (%v), want %d", resp, err, tc.status)
			}
		})
	}
	t.Run("viewer may not prompt", func(t *testing.T) {
		owner, _, err := dialPeer(t, url, nil, "Authorization", "Bearer "+e2eClientToken)
		if err != nil {
			t.Fatal(err)
		}
		res, _ := owner.call(1, "session/new", map[string]any{})
		sid := field(res, "result", "sessionId")
		v, _, err := dialPeer(t, url, nil, "Authorization", "Bearer "+e2eViewerToken)
		if err != nil {
			t.Fatal(err)
		}
		if res, _ := v.call(1, "bridge/attach", map[string]any{"sessionId": sid}); res["error"] != nil {
			t.Fatalf("viewer attach: %v", res)
		}
		if res, _ := v.call(2, "session/prompt", map[string]any{"sessionId": sid, "prompt": []any{}}); errCode(res) != -32001 {
			t.Fatalf("viewer prompt: %v, want -32001", res)
		}
	})
}

// rawUpgrade does a WebSocket handshake by hand and returns the stream.
func rawUpgrade(t *testing.T, addr string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	fmt.Fprintf(c, "GET /acp HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nAuthorization: Bearer %s\r\n\r\n", addr, e2eClientToken)
	br := bufio.NewReader(c)
	_ = c.SetReadDeadline(time.Now().Add(wait))
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 101 {
		t.Fatalf("upgrade: %v %v", resp, err)
	}
	return c, br
}

// serverFrame reads one unmasked frame: opcode and payload.
func serverFrame(br *bufio.Reader) (byte, []byte, error) {
	var h [2]byte
	if _, err := io.ReadFull(br, h[:]); err != nil {
		return 0, nil, err
	}
	n := int(h[1] & 0x7F)
	switch n {
	case 126:
		var b [2]byte
		if _, err := io.ReadFull(br, b[:]); err != nil {
			return 0, nil, err
		}
		n = int(b[0])<<8 | int(b[1])
	case 127:
		var b [8]byte
		if _, err := io.ReadFull(br, b[:]); err != nil {
			return 0, nil, err
		}
		n = 0
		for _, x := range b {
			n = n<<8 | int(x)
		}
	}
	p := make([]byte, n)
	_, err := io.ReadFull(br, p)
	return h[0] & 0x0F, p, err
}

func TestWSHeartbeatDropsSilentPeer(t *testing.T) {
	t.Parallel()
	d := netDaemon(t, append([]string{"--heartbeat", "200ms"}, fakeAgentCmd()...)...)
	start := time.Now() // before the upgrade: silence starts no earlier
	c, br := rawUpgrade(t, d.listen)
	_ = c.SetReadDeadline(time.Now().Add(wait))
	pings := 0
	for {
		op, p, err := serverFrame(br)
		if err != nil {
			t.Fatalf("stream ended without a close frame after %d pings: %v", pings, err)
		}
		if op == 0x9 {
			pings++ // never answered
			continue
		}
		if op == 0x8 {
			if len(p) < 2 || int(p[0])<<8|int(p[1]) != 1001 {
				t.Fatalf("close payload %q, want 1001", p)
			}
			break
		}
	}
	if _, err := br.ReadByte(); !errors.Is(err, io.EOF) {
		t.Fatalf("after the close frame: %v, want EOF", err)
	}
	if el := time.Since(start); el < 400*time.Millisecond || pings == 0 {
		t.Fatalf("dropped after %s with %d pings; want two silent heartbeats of 200ms", el, pings)
	}
	body := httpGet(t, "http://"+d.listen+"/metrics", nil, e2eViewerToken, 200)
	if !strings.Contains(body, `agentbridge_half_open_total{transport="ws"} 1`) {
		t.Fatalf("metrics do not count the half-open peer:\n%s", grepLines(body, "half_open"))
	}
}

func httpGet(t *testing.T, url string, conf *tls.Config, token string, status int, hdr ...string) string {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	cl := &http.Client{Timeout: wait, Transport: &http.Transport{TLSClientConfig: conf}}
	resp, err := cl.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != status {
		t.Fatalf("GET %s: %s %s, want %d", url, resp.Status, b, status)
	}
	return string(b)
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func TestHTTPHealthzAndMetrics(t *testing.T) {
	t.Parallel()
	d := netDaemon(t, fakeAgentCmd()...)
	var h struct {
		Status string `json:"status"`
		Agent  struct {
			Up bool `json:"up"`
		} `json:"agent"`
	}
	deadline := time.Now().Add(wait)
	for !h.Agent.Up { // the agent starts right after the listeners
		if err := json.Unmarshal([]byte(httpGet(t, "http://"+d.listen+"/healthz", nil, "", 200)), &h); err != nil {
			t.Fatal(err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("healthz never reports the agent up: %+v", h)
		}
	}
	if h.Status != "ok" {
		t.Fatalf("healthz status %q", h.Status)
	}
	httpGet(t, "http://"+d.listen+"/metrics", nil, "", 401)
	body := httpGet(t, "http://"+d.listen+"/metrics", nil, e2eViewerToken, 200)
	for _, want := range []string{"agentbridge_connections_total", "agentbridge_agent_restarts_total 0", "agentbridge_agent_up 1", "agentbridge_http_requests_total"} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	httpGet(t, "http://"+d.listen+"/nope", nil, "", 404)
}

func TestSSEResumeWithLastEventID(t *testing.T) {
	t.Parallel()
	d := netDaemon(t, fakeAgentCmd()...)
	p, _, err := dialPeer(t, "ws://"+d.listen+"/acp", nil, "Authorization", "Bearer "+e2eClientToken)
	if err != nil {
		t.Fatal(err)
	}
	res, _ := p.call(1, "session/new", map[string]any{})
	sid, _ := field(res, "result", "sessionId").(string)
	p.call(2, "burst", map[string]any{"sessionId": sid, "n": 5, "size": 10})

	req, _ := http.NewRequest("GET", "http://"+d.listen+"/events?session="+sid, nil)
	req.Header.Set("Authorization", "Bearer "+e2eViewerToken)
	req.Header.Set("Last-Event-ID", "3")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		t.Fatalf("%s %v", resp.Status, resp.Header)
	}
	events := make(chan [2]string, 100)
	go func() {
		sc := bufio.NewScanner(resp.Body)
		var id string
		for sc.Scan() {
			line := sc.Text()
			switch {
			case strings.HasPrefix(line, "id: "):
				id = line[4:]
			case strings.HasPrefix(line, "data: ") && id != "":
				events <- [2]string{id, line[6:]}
				id = ""
			}
		}
		close(events)
	}()
	next := func(want int) {
		t.Helper()
		select {
		case ev, ok := <-events:
			if !ok {
				t.Fatal("stream ended")
			}
			var m map[string]any
			_ = json.Unmarshal([]byte(ev[1]), &m)
			if ev[0] != strconv.Itoa(want) || m["method"] != "session/update" || field(m, "params", "n") != float64(want-1) {
				t.Fatalf("event %s %s, want seq %d", ev[0], ev[1], want)
			}
		case <-time.After(wait):
			t.Fatalf("no event %d", want)
		}
	}
	next(4)
	next(5)
	p.call(3, "burst", map[string]any{"sessionId": sid, "n": 1, "size": 1})
	select {
	case ev := <-events:
		if ev[0] != "6" {
			t.Fatalf("live event id %s, want 6", ev[0])
		}
	case <-time.After(wait):
		t.Fatal("no live event")
	}
	httpGet(t, "http://"+d.listen+"/events?session=nope", nil, e2eViewerToken, 404)
	httpGet(t, "http://"+d.listen+"/events?session="+sid, nil, "", 401)
}

// selfSigned writes a certificate for 127.0.0.1 and its key.
func selfSigned(t *testing.T) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: "agentbridge e2e"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true, IsCA: true, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalECPrivateKey(key)
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600)
	cert, _ := x509.ParseCertificate(der)
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}

// connectShim runs `agentbridge connect` with stdin lines and returns its
// stdout lines, stderr and exit error.
func connectShim(t *testing.T, env []string, stdin string, args ...string) ([]map[string]any, string, error) {
	t.Helper()
	cmd := exec.Command(binPath, append([]string{"connect"}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { done <- cmd.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-time.After(3 * wait):
		_ = cmd.Process.Kill()
		t.Fatalf("connect did not exit; stderr: %s", errb.String())
	}
	var lines []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		if l == "" {
			continue
		}
		var m map[string]any
		if json.Unmarshal([]byte(l), &m) != nil {
			t.Fatalf("stdout line is not JSON: %q", l)
		}
		lines = append(lines, m)
	}
	return lines, errb.String(), err
}

const shimInput = `{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":1}}
{"jsonrpc":"2.0","id":2,"method":"session/new","params":{}}
`

func checkShimAnswers(t *testing.T, lines []map[string]any, stderr string, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("connect: %v\n%s", err, stderr)
	}
	if len(lines) != 2 || field(lines[0], "result", "protocolVersion") == nil || field(lines[1], "result", "sessionId") == nil {
		t.Fatalf("connect stdout: %v (stderr %s)", lines, stderr)
	}
}

func TestWSConnectShim(t *testing.T) {
	t.Parallel()
	d := netDaemon(t, fakeAgentCmd()...)
	url := "ws://" + d.listen + "/acp"
	lines, stderr, err := connectShim(t, []string{"AGENTBRIDGE_TOKEN=" + e2eClientToken}, shimInput, url)
	checkShimAnswers(t, lines, stderr, err)

	_, stderr, err = connectShim(t, nil, "", "--token", "wrong-token-000000000000", url)
	if err == nil || !strings.Contains(stderr, "token rejected") {
		t.Fatalf("wrong token: %v %s", err, stderr)
	}
	_, stderr, err = connectShim(t, nil, "", "--token", e2eClientToken, "ws://"+freeAddr(t)+"/acp")
	if err == nil || !strings.Contains(stderr, "no daemon listening at") {
		t.Fatalf("nothing listening: %v %s", err, stderr)
	}
}

func TestTLSConnectShimAndHTTPS(t *testing.T) {
	t.Parallel()
	cert, key, pool := selfSigned(t)
	d := netDaemon(t, append([]string{"--tls-cert", cert, "--tls-key", key}, fakeAgentCmd()...)...)
	url := "wss://" + d.listen + "/acp"

	lines, stderr, err := connectShim(t, nil, shimInput, "--ca", cert, "--token", e2eClientToken, url)
	checkShimAnswers(t, lines, stderr, err)

	_, stderr, err = connectShim(t, nil, "", "--token", e2eClientToken, url)
	if err == nil || !strings.Contains(stderr, "unknown authority") || !strings.Contains(stderr, "--ca") {
		t.Fatalf("untrusted certificate: %v %s", err, stderr)
	}

	conf := &tls.Config{RootCAs: pool}
	httpGet(t, "https://"+d.listen+"/healthz", conf, "", 200)
	body := httpGet(t, "https://"+d.listen+"/metrics", conf, e2eViewerToken, 200)
	if !strings.Contains(body, `agentbridge_connections_total{transport="wss"}`) {
		t.Fatalf("metrics lack the wss connections:\n%s", grepLines(body, "connections_total"))
	}
	if _, resp, err := dialPeer(t, url, conf); err == nil || resp == nil || resp.StatusCode != 401 {
		t.Fatalf("wss without token: %v %v", resp, err)
	}
	p, resp, err := dialPeer(t, url, conf, "Sec-WebSocket-Protocol", "agentbridge.token."+e2eClientToken)
	if err != nil {
		t.Fatal(err)
	}
	// The wss 101 names the connection as the ws one does.
	if id := resp.Header.Get("Acp-Connection-Id"); len(id) != 36 || strings.Count(id, "-") != 4 {
		t.Fatalf("Acp-Connection-Id %q on the wss 101", id)
	}
	if res, _ := p.call(1, "echo", map[string]any{"x": 1}); field(res, "result", "x") != float64(1) {
		t.Fatalf("echo over wss: %v", res)
	}
	// Plain HTTP on the TLS port is not served.
	c, err := net.Dial("tcp", d.listen)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
	_ = c.SetReadDeadline(time.Now().Add(wait))
	b, _ := io.ReadAll(c)
	if bytes.Contains(b, []byte("200 OK")) {
		t.Fatalf("plain HTTP answered on the TLS port: %q", b)
	}
}

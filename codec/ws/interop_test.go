package ws

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/lxzan/gws"
)

// echoServer is a minimal server built only from this package: it answers
// the handshake, feeds whatever each read returns to a Reader (reads are
// deliberately small so frames arrive cut at arbitrary points), echoes data
// messages, answers pings, closes when asked to by the text "close me",
// answers the peer's close, and reports what it saw.
func echoServer(conn net.Conn) (seen []got, err error) {
	defer conn.Close()
	br := bufio.NewReader(conn)
	req, err := http.ReadRequest(br)
	if err != nil {
		return nil, err
	}
	if status, reason := CheckHandshake(req); status != 0 {
		_, _ = conn.Write(AppendHandshakeError(nil, status, reason))
		return nil, fmt.Errorf("handshake refused: %d %s", status, reason)
	}
	sub := ""
	if offered := Subprotocols(req); slices.Contains(offered, "acp") {
		sub = "acp"
	}
	if _, err := conn.Write(AppendHandshakeResponse(nil, req.Header.Get("Sec-WebSocket-Key"), sub)); err != nil {
		return nil, err
	}

	r := Reader{RequireMask: true}
	var pending, out []byte
	closing := false
	chunk := make([]byte, 37)
	for {
		k, rerr := br.Read(chunk)
		pending = append(pending, chunk[:k]...)
		for {
			ev, n, err := r.Next(pending)
			pending = pending[n:]
			if err != nil {
				var pe *ProtocolError
				errors.As(err, &pe)
				_, _ = conn.Write(AppendClose(nil, pe.Code, pe.Reason))
				return seen, err
			}
			if ev.Kind == EventNone {
				break
			}
			seen = append(seen, record(ev))
			out = out[:0]
			switch ev.Kind {
			case EventText:
				if string(ev.Payload) == "close me" {
					// Start the close handshake; the client's answer
					// arrives as EventClose.
					out = AppendClose(out, CloseNormal, "bye")
					closing = true
					break
				}
				out = AppendFrame(out, true, OpText, ev.Payload)
			case EventBinary:
				out = AppendFrame(out, true, OpBinary, ev.Payload)
			case EventPing:
				out = AppendFrame(out, true, OpPong, ev.Payload)
			case EventClose:
				if closing {
					return seen, nil // the peer answered our close
				}
				_, err := conn.Write(AppendClose(out, ev.CloseCode, string(ev.Payload)))
				return seen, err
			}
			if _, err := conn.Write(out); err != nil {
				return seen, err
			}
		}
		if rerr != nil {
			return seen, rerr
		}
	}
}

type gwsClient struct {
	gws.BuiltinEventHandler
	messages chan got
	closed   chan error
}

func (h *gwsClient) OnMessage(c *gws.Conn, m *gws.Message) {
	defer m.Close()
	kind := EventBinary
	if m.Opcode == gws.OpcodeText {
		kind = EventText
	}
	h.messages <- got{Kind: kind, Payload: m.Data.String()}
}

func (h *gwsClient) OnPong(c *gws.Conn, payload []byte) {
	h.messages <- evPong(string(payload))
}

func (h *gwsClient) OnClose(c *gws.Conn, err error) { h.closed <- err }

// A real, independent client (gws) talks to a server made of this package.
func TestInteropWithGwsClient(t *testing.T) {
	srv, cli := net.Pipe()
	type result struct {
		seen []got
		err  error
	}
	done := make(chan result, 1)
	go func() {
		seen, err := echoServer(srv)
		done <- result{seen, err}
	}()

	h := &gwsClient{messages: make(chan got, 16), closed: make(chan error, 1)}
	header := http.Header{}
	header.Set("Sec-WebSocket-Protocol", "mcp, acp")
	conn, resp, err := gws.NewClientFromConn(h, &gws.ClientOption{
		Addr:             "ws://agentbridge.test/acp",
		RequestHeader:    header,
		CheckUtf8Enabled: true,
	}, cli)
	if err != nil {
		t.Fatalf("handshake: %v", err)
	}
	if conn.SubProtocol() != "acp" || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("subprotocol %q status %d", conn.SubProtocol(), resp.StatusCode)
	}
	go conn.ReadLoop()

	timeout := time.After(30 * time.Second)
	expect := func(want got) {
		t.Helper()
		select {
		case g := <-h.messages:
			if g != want {
				t.Fatalf("client got %s, want %s", brief([]got{g}), brief([]got{want}))
			}
		case <-timeout:
			t.Fatal("timed out waiting for the echo")
		}
	}
	big := string(fill(300_000))
	sent := []got{evText(`{"jsonrpc":"2.0","id":1,"method":"initialize"}`), evText("κόσμε 😀"), evText(""),
		evBinary(big), evText(pattern(70_000, true))}
	for _, m := range sent {
		op := gws.OpcodeText
		if m.Kind == EventBinary {
			op = gws.OpcodeBinary
		}
		if err := conn.WriteMessage(op, []byte(m.Payload)); err != nil {
			t.Fatal(err)
		}
		expect(m)
	}
	if err := conn.WritePing([]byte("are you there")); err != nil {
		t.Fatal(err)
	}
	expect(evPong("are you there"))
	if err := conn.WriteString("close me"); err != nil {
		t.Fatal(err)
	}

	var res result
	select {
	case res = <-done:
	case <-timeout:
		t.Fatal("timed out waiting for the server")
	}
	if res.err != nil {
		t.Fatalf("server: %v", res.err)
	}
	// gws answers a close frame with the code alone.
	want := append(slices.Clone(sent), evPing("are you there"), evText("close me"), evClose(CloseNormal, ""))
	if !slices.Equal(res.seen, want) {
		t.Fatalf("server saw %s\nwant %s", brief(res.seen), brief(want))
	}
	select {
	case err := <-h.closed:
		var ce *gws.CloseError
		if !errors.As(err, &ce) || ce.Code != 1000 || !bytes.Equal(ce.Reason, []byte("bye")) {
			t.Fatalf("client closed with %v, want the server's close 1000 bye", err)
		}
	case <-timeout:
		t.Fatal("timed out waiting for the client to close")
	}
}

// The server rejects a client that violates the protocol with the right
// close code, and the client sees that code.
func TestInteropRefusesBadClient(t *testing.T) {
	srv, cli := net.Pipe()
	done := make(chan error, 1)
	go func() {
		_, err := echoServer(srv)
		done <- err
	}()
	h := &gwsClient{messages: make(chan got, 16), closed: make(chan error, 1)}
	conn, _, err := gws.NewClientFromConn(h, &gws.ClientOption{Addr: "ws://agentbridge.test/acp"}, cli)
	if err != nil {
		t.Fatalf("handshake: %v", err)
	}
	go conn.ReadLoop()
	// gws does not validate outgoing text, so it sends invalid UTF-8.
	if err := conn.WriteMessage(gws.OpcodeText, []byte("bad \xff text")); err != nil {
		t.Fatal(err)
	}
	timeout := time.After(30 * time.Second)
	select {
	case err := <-done:
		if !errors.Is(err, CloseInvalidPayload) {
			t.Fatalf("server error %v, want close 1007", err)
		}
	case <-timeout:
		t.Fatal("timed out waiting for the server")
	}
	select {
	case err := <-h.closed:
		var ce *gws.CloseError
		if !errors.As(err, &ce) || ce.Code != uint16(CloseInvalidPayload) {
			t.Fatalf("client closed with %v, want close 1007", err)
		}
	case <-timeout:
		t.Fatal("timed out waiting for the client to close")
	}
}

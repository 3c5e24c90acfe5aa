package bench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// acpHTTP is the POST side of an ACP Streamable HTTP client connection,
// the way the ACP SDK's createHttpStream talks (ACP.md A1): initialize is
// a POST answered 200 with an Acp-Connection-Id; then a GET opens the
// connection's SSE stream, every later message is a POST answered 202,
// and every answer arrives as an event on the stream. Unlike a browser's
// fetch, the POSTs are pipelined on one keep-alive connection so the load
// generator is not what is measured; a goroutine reads their 202s.
type acpHTTP struct {
	head   []byte   // a POST's head up to the Content-Length value; read-only
	del    []byte   // the DELETE that ends the connection; read-only
	stream net.Conn // the SSE GET's socket
	failed atomic.Pointer[error]
}

// appendPost appends msg as one POST. Writer goroutine only.
func (a *acpHTTP) appendPost(dst, msg []byte) []byte {
	dst = append(dst, a.head...)
	dst = strconv.AppendInt(dst, int64(len(msg)), 10)
	dst = append(dst, "\r\n\r\n"...)
	return append(dst, msg...)
}

// err is why the POST side failed, or nil. Any goroutine.
func (a *acpHTTP) err() error {
	if e := a.failed.Load(); e != nil {
		return *e
	}
	return nil
}

// dialHTTP opens an ACP Streamable HTTP connection to t (its addr, host,
// path and token; the path is /acp, as for WebSocket).
func dialHTTP(ctx context.Context, t wsTarget, o connOpts) (*msgConn, error) {
	auth := ""
	if t.token != "" {
		auth = "Authorization: Bearer " + t.token + "\r\n"
	}
	post, err := dialTCP(ctx, t.addr)
	if err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			post.Close()
		}
	}()
	pbr := bufio.NewReaderSize(post, 4096)
	init := `{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":1,"clientCapabilities":{}}}`
	req := fmt.Sprintf("POST %s HTTP/1.1\r\nHost: %s\r\n%sContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", t.path, t.host, auth, len(init), init)
	resp, err := roundTrip(post, pbr, req)
	if err != nil {
		return nil, fmt.Errorf("ACP HTTP initialize: %w", err)
	}
	id := resp.Header.Get("Acp-Connection-Id")
	if resp.StatusCode != http.StatusOK || id == "" {
		return nil, fmt.Errorf("ACP HTTP initialize: %s without an Acp-Connection-Id", resp.Status)
	}
	stream, err := dialTCP(ctx, t.addr)
	if err != nil {
		return nil, err
	}
	sbr := bufio.NewReaderSize(stream, o.bufSize())
	resp, err = roundTrip(stream, sbr, fmt.Sprintf("GET %s HTTP/1.1\r\nHost: %s\r\n%sAccept: text/event-stream\r\nAcp-Connection-Id: %s\r\n\r\n", t.path, t.host, auth, id))
	if err == nil && (resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream")) {
		err = fmt.Errorf("%s, %q", resp.Status, resp.Header.Get("Content-Type"))
	}
	if err != nil {
		stream.Close()
		return nil, fmt.Errorf("ACP HTTP SSE GET: %w", err)
	}
	_ = post.SetDeadline(time.Time{})
	_ = stream.SetDeadline(time.Time{})
	a := &acpHTTP{
		head:   []byte(fmt.Sprintf("POST %s HTTP/1.1\r\nHost: %s\r\n%sAcp-Connection-Id: %s\r\nContent-Type: application/json\r\nContent-Length: ", t.path, t.host, auth, id)),
		del:    []byte(fmt.Sprintf("DELETE %s HTTP/1.1\r\nHost: %s\r\n%sAcp-Connection-Id: %s\r\n\r\n", t.path, t.host, auth, id)),
		stream: stream,
	}
	m := newMsgConn(post, pbr, false, o)
	m.http, m.sse = a, newSSEScanner(bufio.NewReaderSize(resp.Body, o.bufSize()))
	m.onClose = func() { stream.Close() }
	go m.readAcks(pbr)
	ok = true
	return m, nil
}

func dialTCP(ctx context.Context, addr string) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	_ = c.(*net.TCPConn).SetNoDelay(true)
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	return c, nil
}

// roundTrip writes one request and reads its response head; the body is
// read whole unless it is an event stream, which is left to the caller.
func roundTrip(c net.Conn, br *bufio.Reader, req string) (*http.Response, error) {
	if _, err := io.WriteString(c, req); err != nil {
		return nil, err
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return nil, err
	}
	if !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		resp.Body.Close()
		if resp.StatusCode/100 != 2 {
			return nil, fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(body)))
		}
	}
	return resp, nil
}

// readAcks reads the POSTs' answers, each of which must be 202; anything
// else fails the connection, and Next reports it. It owns br.
func (m *msgConn) readAcks(br *bufio.Reader) {
	for {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			return // closed: Next reports the stream's end
		}
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 300))
		resp.Body.Close()
		if resp.StatusCode != http.StatusAccepted {
			e := fmt.Errorf("a POST was answered %s: %s", resp.Status, strings.TrimSpace(string(body)))
			m.http.failed.Store(&e)
			m.Close()
			return
		}
	}
}

// nextSSE is Next for ACP HTTP: the next event of the stream.
func (m *msgConn) nextSSE() ([]byte, error) {
	data, err := m.sse.next()
	if err != nil {
		if perr := m.http.err(); perr != nil {
			return nil, perr
		}
		return nil, err
	}
	return data, nil
}

// endHTTP sends the DELETE that ends an ACP HTTP connection, as a
// well-behaved client does, unless a write is stuck. Close calls it.
func (m *msgConn) endHTTP() {
	if !m.wmu.TryLock() {
		return // a writer is blocked on the socket: the close ends it
	}
	defer m.wmu.Unlock()
	_ = m.c.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
	_, _ = m.c.Write(m.http.del)
}

package loop

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"os/exec"
	"testing"
	"time"
)

// TestCloseNotHeldByChild: a connection the daemon closes is closed for
// its peer even while a child process started after it opened is running
// (the agent after a restart, a --terminal shell). gnet's Register dups
// the descriptor without close-on-exec, so such a child used to inherit
// the socket and hold it open: the peer saw silence, not the end of the
// stream, for as long as the child lived.
func TestCloseNotHeldByChild(t *testing.T) {
	e := startEnv(t, HTTPConfig{})
	c, err := net.DialTimeout("tcp", e.addr, wait)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	get := func(extra string) *http.Response {
		t.Helper()
		if _, err := io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n"+extra+"\r\n"); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(wait))
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp
	}
	get("") // answered: the loop has opened the connection
	// A child of this process (the daemon's, in this test) started now.
	child := exec.Command("sleep", "60")
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = child.Process.Kill(); _ = child.Wait() }()
	if resp := get("Connection: close\r\n"); !resp.Close {
		t.Fatalf("want Connection: close, got %v", resp.Header)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := br.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("the daemon closed the connection but its peer reads %d bytes, %v (a child holds the socket?)", n, err)
	}
}

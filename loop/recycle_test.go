package loop

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestRecycledAnswersIntact: a client's answers are recycled by its
// connection's endpoint once written (wire.SingleUse, delivery.Copier), so
// a pooled answer's bytes are reused by the next one. A Unix-socket client
// pipelines thousands of requests of every pooled size and reads nothing
// until its answers are far more than the kernel's socket buffer holds:
// the daemon's writes are refused in part (a frame's tail handed to gnet,
// the rest held by the endpoint, input held back), then the client reads
// everything. Every answer must come back whole, in order, with its own id
// and its own params: an answer recycled before its bytes (or its tail)
// were written would carry a later answer's bytes.
func TestRecycledAnswersIntact(t *testing.T) {
	dir, err := os.MkdirTemp("", "abrc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "s.sock")
	e := startEnv(t, HTTPConfig{}, func(c *Config) { c.UDS = sock })

	c, err := net.DialTimeout("unix", sock, wait)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })

	// Params of every inline size of wire.Spliced (64 to 928 bytes) and
	// past it, each request's pad its own letter.
	const n = 4000
	params := func(i int) string {
		pad := strings.Repeat(string(rune('a'+i%26)), 10+(i*37)%1000)
		return fmt.Sprintf(`{"i":%d,"pad":"%s"}`, i, pad)
	}
	sent := make(chan error, 1)
	go func() {
		w := bufio.NewWriterSize(c, 64<<10)
		for i := 1; i <= n; i++ {
			fmt.Fprintf(w, `{"jsonrpc":"2.0","id":%d,"method":"echo","params":%s}`+"\n", i, params(i))
		}
		sent <- w.Flush()
	}()

	// Read nothing until the daemon has queued more answers than any
	// socket buffer takes (over 1 MB), so that it wrote some in part and
	// holds the rest.
	base := e.hub.Stats().Deliveries
	deadline := time.Now().Add(30 * time.Second)
	for e.hub.Stats().Deliveries-base < 2000 {
		if time.Now().After(deadline) {
			t.Fatalf("only %d answers queued within 30 s", e.hub.Stats().Deliveries-base)
		}
		time.Sleep(5 * time.Millisecond) // polling a counter, not synchronising
	}

	_ = c.SetReadDeadline(time.Now().Add(60 * time.Second))
	r := bufio.NewReaderSize(c, 64<<10)
	// The bridge's own refusals (past --max-inflight) overtake the agent's
	// answers; the agent's come in the order it was asked.
	seen := make([]bool, n+1)
	results, last := 0, 0
	for answered := 0; answered < n; {
		line, err := r.ReadBytes('\n')
		if err != nil {
			t.Fatalf("reading after %d answers: %v (%d bytes read of the line)", answered, err, len(line))
		}
		var m struct {
			ID     *int            `json:"id"`
			Method string          `json:"method"`
			Result json.RawMessage `json:"result"`
			Error  json.RawMessage `json:"error"`
		}
		if err := json.Unmarshal(line, &m); err != nil || !bytes.HasPrefix(line, []byte(`{"jsonrpc":"2.0",`)) {
			t.Fatalf("after %d answers, not a JSON-RPC message (%v): %.200q", answered, err, line)
		}
		if m.ID == nil {
			if m.Method == "" {
				t.Fatalf("a message with neither id nor method: %.200q", line)
			}
			continue // a notification (bridge/status)
		}
		id := *m.ID
		if id < 1 || id > n || seen[id] {
			t.Fatalf("id %d unknown or answered twice: %.200q", id, line)
		}
		seen[id] = true
		answered++
		switch {
		case m.Result != nil:
			if got := string(m.Result); got != params(id) {
				t.Fatalf("answer %d carries another's result: got %.120q..., want %.120q...", id, got, params(id))
			}
			if id < last {
				t.Fatalf("the agent's answer %d came after its answer %d", id, last)
			}
			last = id
			results++
		case m.Error == nil:
			t.Fatalf("answer %d has neither result nor error: %.200q", id, line)
		}
	}
	if err := <-sent; err != nil {
		t.Fatalf("writing the requests: %v", err)
	}
	if results < n/2 {
		t.Fatalf("only %d of %d answers were the agent's (the rest errors): the fast path was not exercised", results, n)
	}
}

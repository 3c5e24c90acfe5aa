package fleet

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

// TestRemoteIDs: the owning node rewrites its agent requests' ids (the
// request's own, and params' in bridge/resolved and the cancels) to
// "fleet/<node>/<id>" and an answer's back; other messages and other
// nodes' ids are left alone.
func TestRemoteIDs(t *testing.T) {
	f := &Fleet{cfg: Config{Node: "A"}}
	for in, want := range map[string]string{
		`{"jsonrpc":"2.0","id":7,"method":"session/request_permission","params":{"sessionId":"s"}}`: `{"jsonrpc":"2.0","id":"fleet/A/7","method":"session/request_permission","params":{"sessionId":"s"}}`,
		`{"jsonrpc":"2.0","method":"bridge/resolved","params":{"sessionId":"s","id":7}}`:            `{"jsonrpc":"2.0","method":"bridge/resolved","params":{"sessionId":"s","id":"fleet/A/7"}}`,
		`{"jsonrpc":"2.0","method":"$/cancel_request","params":{"requestId":7}}`:                    `{"jsonrpc":"2.0","method":"$/cancel_request","params":{"requestId":"fleet/A/7"}}`,
		`{"jsonrpc":"2.0","id":3,"result":{"stopReason":"end_turn"}}`:                               `{"jsonrpc":"2.0","id":3,"result":{"stopReason":"end_turn"}}`,
		`{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"s"}}`:                    `{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"s"}}`,
	} {
		if got := string(f.toRemote([]byte(in))); got != want {
			t.Errorf("toRemote(%s) = %s, want %s", in, got, want)
		}
	}
	for in, want := range map[string]string{
		`{"jsonrpc":"2.0","id":"fleet/A/7","result":{}}`: `{"jsonrpc":"2.0","id":7,"result":{}}`,
		`{"jsonrpc":"2.0","id":"fleet/B/7","result":{}}`: `{"jsonrpc":"2.0","id":"fleet/B/7","result":{}}`,
		`{"jsonrpc":"2.0","id":"x","result":{}}`:         `{"jsonrpc":"2.0","id":"x","result":{}}`,
	} {
		if got := string(f.fromRemote([]byte(in))); got != want {
			t.Errorf("fromRemote(%s) = %s, want %s", in, got, want)
		}
	}
	for _, bad := range []string{`"fleet/"`, `"fleet/A/"`, `"fleet//7"`, `"fleet/a.b/7"`, `"other/A/7"`, `7`} {
		if _, _, ok := parseRemoteID([]byte(bad)); ok {
			t.Errorf("parseRemoteID(%s) accepted", bad)
		}
	}
}

// seqHub is a ForwardHub whose mirror seq the test sets and whose
// deliveries it reads; the other methods are not used.
type seqHub struct {
	ForwardHub
	mu        sync.Mutex
	seq       uint64
	delivered chan string
}

func (h *seqHub) MirrorSeq(string) uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.seq
}

func (h *seqHub) Deliver(_ uint64, body []byte) bool {
	h.delivered <- string(body)
	return true
}

func (h *seqHub) set(f *Fleet, seq uint64) {
	h.mu.Lock()
	h.seq = seq
	h.mu.Unlock()
	f.mirrored()
}

// TestDeliveryWaitsForMirror: a delivery that the owning node sent after
// events up to seq 5 reaches the client only once the local mirror holds
// seq 5 (the prompt's answer after its updates).
func TestDeliveryWaitsForMirror(t *testing.T) {
	h := &seqHub{delivered: make(chan string, 1)}
	f := &Fleet{cfg: Config{Node: "B"}, log: slog.Default(), ctx: context.Background()}
	f.fw.hub = h
	f.fw.pending = map[uint64]map[string]string{1: {"1": "A"}} // request 1 of conn 1 went to A
	msg := nats.NewMsg(f.outSubject("B"))
	msg.Header.Set(hdrConn, "1")
	msg.Header.Set(hdrAfter, Encode("s1")+":5")
	msg.Data = []byte(`{"jsonrpc":"2.0","id":1,"result":{"stopReason":"end_turn"}}`)
	go f.outbound(msg)
	h.set(f, 3)
	select {
	case got := <-h.delivered:
		t.Fatalf("delivered %s with the mirror at seq 3 of 5", got)
	case <-time.After(200 * time.Millisecond): // a bounded look for a wrong early delivery
	}
	h.set(f, 5)
	select {
	case got := <-h.delivered:
		if got != string(msg.Data) {
			t.Fatalf("delivered %s", got)
		}
	case <-time.After(afterWait):
		t.Fatal("not delivered once the mirror reached seq 5")
	}
}

// TestSplitRun: a run's bodies come back as published; a truncated run or
// a count that does not match is refused.
func TestSplitRun(t *testing.T) {
	f := &Fleet{cfg: Config{Node: "A", Fleet: "u"}}
	run := []op{{kind: 'a', sid: "s", seq: 4, body: []byte(`{"a":1}`)}, {kind: 'a', sid: "s", seq: 5, body: []byte(`{}`)}}
	m := f.eventMsg(run)
	if m.Header.Get(CountHeader) != "2" || m.Header.Get(SeqHeader) != "4" {
		t.Fatalf("headers %v", m.Header)
	}
	got, err := splitRun(m.Data, 2)
	if err != nil || len(got) != 2 || string(got[0]) != `{"a":1}` || string(got[1]) != `{}` {
		t.Fatalf("splitRun = %q, %v", got, err)
	}
	if _, err := splitRun(m.Data[:len(m.Data)-1], 2); err == nil {
		t.Error("a truncated run was accepted")
	}
	if _, err := splitRun(m.Data, 3); err == nil {
		t.Error("a run of 2 accepted as 3")
	}
}

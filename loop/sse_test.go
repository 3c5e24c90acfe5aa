package loop

import (
	"bufio"
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// sseEvent is one parsed server-sent event.
type sseEvent struct {
	id, event, data string
}

// sseStream reads events from an /events response.
type sseStream struct {
	t    *testing.T
	resp *http.Response
	br   *bufio.Reader
	ch   chan sseEvent
	err  chan error
}

func openSSE(t *testing.T, client *http.Client, url string, hdr ...string) (*sseStream, *http.Response) {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	if resp.StatusCode != 200 {
		return nil, resp
	}
	s := &sseStream{t: t, resp: resp, br: bufio.NewReader(resp.Body), ch: make(chan sseEvent, 1024), err: make(chan error, 1)}
	go s.run()
	return s, resp
}

// run parses the stream; comments become events with event ":".
func (s *sseStream) run() {
	var ev sseEvent
	for {
		line, err := s.br.ReadString('\n')
		if err != nil {
			s.err <- err
			close(s.ch)
			return
		}
		line = strings.TrimRight(line, "\n")
		switch {
		case line == "":
			if ev != (sseEvent{}) {
				s.ch <- ev
			}
			ev = sseEvent{}
		case strings.HasPrefix(line, ":"):
			s.ch <- sseEvent{event: ":", data: line}
		case strings.HasPrefix(line, "id: "):
			ev.id = line[4:]
		case strings.HasPrefix(line, "event: "):
			ev.event = line[7:]
		case strings.HasPrefix(line, "data: "):
			if ev.data != "" {
				ev.data += "\n"
			}
			ev.data += line[6:]
		}
	}
}

// next returns the next data event, skipping comments and retry fields.
func (s *sseStream) next() sseEvent {
	s.t.Helper()
	for {
		select {
		case ev, ok := <-s.ch:
			if !ok {
				s.t.Fatalf("stream ended: %v", <-s.err)
			}
			if ev.event == ":" || (ev.id == "" && ev.data == "") {
				continue
			}
			return ev
		case <-time.After(wait):
			s.t.Fatalf("no event within %s", wait)
		}
	}
}

// expectSeqs reads update events with the given ids, in order.
func (s *sseStream) expectSeqs(seqs ...int) {
	s.t.Helper()
	for _, want := range seqs {
		ev := s.next()
		if ev.id != strconv.Itoa(want) {
			s.t.Fatalf("event id %q (%s %q), want %d", ev.id, ev.event, ev.data, want)
		}
		var m struct {
			Method string `json:"method"`
			Params struct {
				Update struct {
					I int `json:"i"`
				} `json:"update"`
			} `json:"params"`
		}
		if err := json.Unmarshal([]byte(ev.data), &m); err != nil || m.Method != "session/update" {
			s.t.Fatalf("event data %q: %v", ev.data, err)
		}
	}
}

// newSession makes a session with n events through a WebSocket client.
func newSession(t *testing.T, e *env, n int) (*wsc, string) {
	t.Helper()
	w := dialWS(t, e.addr)
	sid := w.call(1, "session/new", map[string]any{"cwd": "/"})["result"].(map[string]any)["sessionId"].(string)
	if n > 0 {
		w.call(2, "emit", map[string]any{"sessionId": sid, "n": n})
	}
	return w, sid
}

func TestSSE(t *testing.T) {
	// The default heartbeat: the owner below reads (and so answers pings)
	// only inside its calls, and a short heartbeat would drop it as
	// half-open whenever a subtest takes longer than two of them.
	e := startEnv(t, HTTPConfig{})
	owner, sid := newSession(t, e, 5)
	base := "http://" + e.addr + "/events?session=" + sid
	auth := []string{"Authorization", "Bearer " + viewerToken}

	t.Run("resume with Last-Event-ID", func(t *testing.T) {
		s, resp := openSSE(t, http.DefaultClient, base, append(auth, "Last-Event-ID", "2")...)
		if s == nil {
			t.Fatalf("status %s", resp.Status)
		}
		if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/event-stream") {
			t.Fatalf("content type %q", ct)
		}
		s.expectSeqs(3, 4, 5)
		owner.call(3, "emit", map[string]any{"sessionId": sid, "n": 2})
		s.expectSeqs(6, 7)
	})
	t.Run("since query", func(t *testing.T) {
		s, resp := openSSE(t, http.DefaultClient, base+"&since=6&token="+viewerToken)
		if s == nil {
			t.Fatalf("status %s", resp.Status)
		}
		s.expectSeqs(7)
	})
	t.Run("last query", func(t *testing.T) {
		s, resp := openSSE(t, http.DefaultClient, base+"&last=2", auth...)
		if s == nil {
			t.Fatalf("status %s", resp.Status)
		}
		s.expectSeqs(6, 7)
	})
	t.Run("keep-alive comments", func(t *testing.T) {
		// Its own daemon with a short heartbeat: keep-alives come one a
		// heartbeat. Its session's owner is not needed after it made it.
		e := startEnv(t, HTTPConfig{Heartbeat: 200 * time.Millisecond})
		_, sid := newSession(t, e, 1)
		s, _ := openSSE(t, http.DefaultClient, "http://"+e.addr+"/events?session="+sid, auth...)
		comments := 0
		for comments < 3 {
			select {
			case ev := <-s.ch:
				if ev.event == ":" && strings.Contains(ev.data, "keep-alive") {
					comments++
				}
			case <-time.After(wait):
				t.Fatalf("%d keep-alive comments within %s", comments, wait)
			}
		}
	})
	for _, tc := range []struct {
		name   string
		url    string
		hdr    []string
		status int
	}{
		{"unknown session", "http://" + e.addr + "/events?session=nope", auth, 404},
		{"no session", "http://" + e.addr + "/events", auth, 400},
		{"no token", base, nil, 401},
		{"bad since", base + "&since=x", auth, 400},
		{"since beyond", base + "&since=999", auth, 400},
		{"foreign origin", base, append(auth, "Origin", "https://evil.example"), 403},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, resp := openSSE(t, http.DefaultClient, tc.url, tc.hdr...)
			if s != nil || resp.StatusCode != tc.status {
				t.Fatalf("status %s, want %d", resp.Status, tc.status)
			}
			b, _ := io.ReadAll(resp.Body)
			if len(b) == 0 {
				t.Fatal("refusal without a body")
			}
		})
	}
	t.Run("closed on shutdown", func(t *testing.T) {
		s, _ := openSSE(t, http.DefaultClient, base+"&since=0", auth...)
		s.expectSeqs(1)
		e.hub.Shutdown("test")
		timeout := time.After(wait)
		for {
			select {
			case _, ok := <-s.ch:
				if !ok {
					return
				}
			case <-timeout:
				t.Fatalf("stream still open %s after shutdown", wait)
			}
		}
	})
}

package audit

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func readLines(t *testing.T, path string) []Record {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []Record
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var r Record
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("line %q is not a JSON record: %v", sc.Text(), err)
		}
		out = append(out, r)
	}
	return out
}

func TestAppendsJSONLinesWithMode0600(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	// An existing file keeps its lines and loses group/other access.
	if err := os.WriteFile(path, []byte(`{"method":"old","outcome":"kept","time":"2026-01-01T00:00:00Z","connection":0,"role":"bridge"}`+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	l, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	l.Record(Record{Time: now, Connection: 7, Role: "operator", Peer: "127.0.0.1:5", Transport: "ws", Session: "s1",
		Method: "session/request_permission", Outcome: "answered", RequestID: 3, ToolCall: "t1", Option: "selected:allow"})
	l.Record(Record{Time: now, Connection: 8, Role: "viewer", Method: "session/prompt", Outcome: "denied", Detail: `a "quoted" <detail>`})
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); !errors.Is(err, ErrClosed) {
		t.Fatalf("second Close: %v", err)
	}
	l.Record(Record{Method: "late"}) // dropped, no panic
	if l.Dropped() != 1 {
		t.Fatalf("dropped %d, want 1", l.Dropped())
	}
	fi, _ := os.Stat(path)
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, want 0600", fi.Mode().Perm())
	}
	recs := readLines(t, path)
	if len(recs) != 3 || recs[0].Method != "old" {
		t.Fatalf("got %+v", recs)
	}
	if r := recs[1]; r.Connection != 7 || r.Role != "operator" || r.Option != "selected:allow" || r.RequestID != 3 || !r.Time.Equal(now) {
		t.Fatalf("record %+v", r)
	}
	if recs[2].Detail != `a "quoted" <detail>` {
		t.Fatalf("detail %q", recs[2].Detail)
	}
	raw, _ := os.ReadFile(path)
	if strings.Contains(string(raw), `\u003c`) {
		t.Fatalf("HTML-escaped output is harder to grep: %s", raw)
	}
}

// TestNeverBlocksAndCountsDrops floods a one-slot queue from many
// goroutines: every record is either in the file or counted as dropped, and
// drops are reported in the file itself.
func TestNeverBlocksAndCountsDrops(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	l, err := Open(path, Options{Queue: 1})
	if err != nil {
		t.Fatal(err)
	}
	const goroutines, each = 8, 2000
	var wg sync.WaitGroup
	for g := 0; g < goroutines; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				l.Record(Record{Role: "client", Method: "m", Outcome: "denied"})
			}
		}()
	}
	wg.Wait()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	recs := readLines(t, path)
	var kept, reported uint64
	for _, r := range recs {
		if r.Method == "audit" {
			var n uint64
			if _, err := fmt.Sscan(r.Detail, &n); err != nil {
				t.Fatalf("drop report %q", r.Detail)
			}
			reported += n
			continue
		}
		kept++
	}
	if kept+l.Dropped() != goroutines*each {
		t.Fatalf("kept %d + dropped %d != %d", kept, l.Dropped(), goroutines*each)
	}
	if reported != l.Dropped() {
		t.Fatalf("the file reports %d drops, the counter %d", reported, l.Dropped())
	}
}

func TestOpenFailsWithPath(t *testing.T) {
	_, err := Open(filepath.Join(t.TempDir(), "missing", "audit.log"), Options{})
	if err == nil || !strings.Contains(err.Error(), "missing") {
		t.Fatalf("err %v", err)
	}
}

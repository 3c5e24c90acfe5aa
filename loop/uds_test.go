package loop

import (
	"bytes"
	"net"
	"path/filepath"
	"runtime"
	"testing"
	"time"
)

// TestAllocsUnixHello: a bridge/hello round trip on an open Unix
// connection allocates nothing in the daemon: the hub answers from a
// pooled message, and the answer, queued inside the callback that read
// the request, is written by the drain after it rather than through a
// gnet wake (a task and its closure per answer). Counted over the whole
// process, the client's side included (it reuses its buffers), so
// anything the server's tick allocates meanwhile shows too: the bound is
// a tenth of an allocation per round trip.
func TestAllocsUnixHello(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates; make test-allocs runs TestAllocs without -race")
	}
	sock := filepath.Join(t.TempDir(), "ab.sock")
	startEnv(t, HTTPConfig{}, func(c *Config) { c.UDS = sock })
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	hello := []byte(`{"jsonrpc":"2.0","id":1,"method":"bridge/hello","params":{}}` + "\n")
	buf := make([]byte, 4096)
	roundTrip := func() {
		if _, err := c.Write(hello); err != nil {
			t.Fatal(err)
		}
		n := 0
		for n == 0 || buf[n-1] != '\n' {
			m, err := c.Read(buf[n:])
			if err != nil {
				t.Fatal(err)
			}
			n += m
		}
		if !bytes.Contains(buf[:n], []byte(`"result":{"version"`)) || bytes.Count(buf[:n], []byte("\n")) != 1 {
			t.Fatalf("answer %q", buf[:n])
		}
	}
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	for range 100 {
		roundTrip() // the outbox's queue slot, pools, the loop's buffers
	}
	const runs = 2000
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for range runs {
		roundTrip()
	}
	runtime.ReadMemStats(&after)
	if per := float64(after.Mallocs-before.Mallocs) / runs; per > 0.1 {
		t.Errorf("a bridge/hello round trip allocated %.2f times, want none", per)
	}
}

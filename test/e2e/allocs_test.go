package e2e

import (
	"bufio"
	"bytes"
	"net"
	"strconv"
	"testing"
	"time"
)

// A client's answers are built into pooled messages and go back to the
// pool once the client's connection has written them (wire.Spliced,
// wire.SingleUse, delivery.Copier), so a stream of pipelined requests
// through the real daemon allocates almost nothing per round trip; before
// the pool it was two allocations per answer (its bytes and its wire.Msg),
// and the collector ran ~35 times a second under load. Counted with the
// daemon's own go_memstats_mallocs_total, less what a scrape costs. Run
// in both agent stdio modes, as every e2e test.
func TestAnswersAllocateNothing(t *testing.T) {
	t.Parallel()
	exe := perfBinary(t) // the race runtime drops pooled items on purpose
	d := startDaemonExe(t, exe, nil, "--listen", anyPort, "--", exe, "bench", "echo-agent")
	c, err := net.Dial("unix", d.sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReaderSize(c, 1<<16)
	var buf []byte
	id := 0
	// roundTrips sends n requests, 100 at a time, and reads every answer.
	roundTrips := func(n int) {
		t.Helper()
		for sent := 0; sent < n; {
			k := min(100, n-sent)
			buf = buf[:0]
			for range k {
				id++
				buf = append(buf, `{"jsonrpc":"2.0","id":`...)
				buf = strconv.AppendInt(buf, int64(id), 10)
				buf = append(buf, `,"method":"bench/echo","params":{"pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}}`+"\n"...)
			}
			_ = c.SetDeadline(time.Now().Add(30 * time.Second))
			if _, err := c.Write(buf); err != nil {
				t.Fatalf("write: %v", err)
			}
			for range k {
				line, err := br.ReadSlice('\n')
				if err != nil {
					t.Fatalf("read after %d requests: %v", sent, err)
				}
				if !bytes.Contains(line, []byte(`"result":"`)) {
					t.Fatalf("not an echo answer: %s", line)
				}
			}
			sent += k
		}
	}
	roundTrips(5000) // warm up: the pools, the client's queue, gnet's buffers
	s0 := d.metric(t, "go_memstats_mallocs_total")
	s1 := d.metric(t, "go_memstats_mallocs_total")
	scrape := s1 - s0
	const n = 50000
	roundTrips(n)
	s2 := d.metric(t, "go_memstats_mallocs_total")
	per := (s2 - s1 - scrape) / n
	t.Logf("%.0f allocations in %d round trips (%.3f each; a scrape costs %.0f)", s2-s1-scrape, n, per, scrape)
	// With pipes the request costs one buffer of its own on the stdin
	// queue (agent.enqueueFramed; on the socket it is framed into the
	// agent connection's batch).
	// What is left is per burst, not per message: the client's queue
	// grows its slot array with a burst and lets it go when it drains
	// (0.03-0.14 per round trip seen); one allocation per answer would be
	// 1 or more.
	limit, why := 0.5, "an answer allocates nothing once its pool is warm"
	if agentStdio == "pipe" {
		limit, why = 1.5, "the request's framed buffer on the stdin queue, and nothing for the answer"
	}
	if per > limit {
		t.Errorf("%.3f allocations per round trip, want at most %.2f (%s)", per, limit, why)
	}
}

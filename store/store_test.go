package store

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

func body(sid string, i int) []byte {
	return []byte(fmt.Sprintf(`{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":%q,"n":%d,"text":"é\u2028\"%s"}}`, sid, i, strings.Repeat("x", i%37)))
}

func mustOpen(t *testing.T, dir string, o Options) (*Store, []Session) {
	t.Helper()
	s, ss, err := Open(dir, o)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { s.Close() }) // idempotent; releases the lock
	return s, ss
}

func find(ss []Session, id string) *Session {
	for i := range ss {
		if ss[i].ID == id {
			return &ss[i]
		}
	}
	return nil
}

// checkEvents asserts that got is exactly the events from..to of sid.
func checkEvents(t *testing.T, sid string, got []Event, from, to int) {
	t.Helper()
	if len(got) != to-from+1 {
		t.Fatalf("%s: %d events, want %d (%d..%d)", sid, len(got), to-from+1, from, to)
	}
	for k, e := range got {
		i := from + k
		if e.Seq != uint64(i) || !bytes.Equal(e.Body, body(sid, i)) {
			t.Fatalf("%s: event %d = seq %d %q, want seq %d %q", sid, k, e.Seq, e.Body, i, body(sid, i))
		}
	}
}

func TestRoundTripAndCleanSeq(t *testing.T) {
	dir := t.TempDir()
	s, ss := mustOpen(t, dir, Options{})
	if len(ss) != 0 {
		t.Fatalf("fresh dir recovered %v", ss)
	}
	s.Create("empty/one") // a session with no events survives too
	for i := 1; i <= 500; i++ {
		s.Append("a", uint64(i), body("a", i))
		if i%2 == 0 {
			s.Append("b:\x00weird id", uint64(i/2), body("b:\x00weird id", i/2))
		}
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if st := s.Stats(); st.Written != 750 || st.Dropped != 0 {
		t.Fatalf("stats %+v", st)
	}
	s2, ss := mustOpen(t, dir, Options{})
	defer s2.Close()
	if len(ss) != 3 {
		t.Fatalf("recovered %d sessions, want 3", len(ss))
	}
	a, b, e := find(ss, "a"), find(ss, "b:\x00weird id"), find(ss, "empty/one")
	if a == nil || b == nil || e == nil {
		t.Fatalf("recovered ids %v", ss)
	}
	checkEvents(t, "a", a.Events, 1, 500)
	checkEvents(t, "b:\x00weird id", b.Events, 1, 250)
	if a.Seq != 500 || b.Seq != 250 || e.Seq != 0 || len(e.Events) != 0 {
		t.Fatalf("after a clean close seqs are a=%d b=%d empty=%d, want 500 250 0", a.Seq, b.Seq, e.Seq)
	}
	if e.Created.IsZero() {
		t.Fatalf("no creation time")
	}
}

// logBytes sums the sizes of the segment files.
func logBytes(t *testing.T, dir string) (int64, int) {
	t.Helper()
	segs, _ := filepath.Glob(filepath.Join(dir, "log", "*.seg"))
	var total int64
	for _, p := range segs {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		total += fi.Size()
	}
	return total, len(segs)
}

func TestRetentionCompactsSegments(t *testing.T) {
	dir := t.TempDir()
	o := Options{MaxEvents: 100, MaxBytes: 1 << 20, SegmentBytes: 4 << 10}
	s, _ := mustOpen(t, dir, o)
	for i := 1; i <= 1000; i++ {
		s.Append("a", uint64(i), body("a", i))
		s.Append("b", uint64(i), body("b", i))
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// Two sessions of 100 kept events (~130 bytes framed): the log holds
	// about twice the live bytes plus a segment, never the 2,000 written.
	total, n := logBytes(t, dir)
	if live := int64(2 * 100 * 140); total > 2*live+3*int64(o.SegmentBytes) {
		t.Fatalf("%d bytes in %d segments for ~%d live", total, n, live)
	}
	if s.Stats().Compactions == 0 {
		t.Fatal("no compaction")
	}
	s2, ss := mustOpen(t, dir, o)
	for _, id := range []string{"a", "b"} {
		x := find(ss, id)
		if x == nil || len(x.Events) != 100 {
			t.Fatalf("%s: recovered %v", id, x)
		}
		checkEvents(t, id, x.Events, 901, 1000)
	}
	// Appending continues after recovery.
	for i := 1001; i <= 1010; i++ {
		s2.Append("a", uint64(i), body("a", i))
	}
	s2.Close()
	_, ss = mustOpen(t, dir, o)
	checkEvents(t, "a", find(ss, "a").Events, 911, 1010)

	// Byte bound: big bodies.
	dir2 := t.TempDir()
	o2 := Options{MaxEvents: 1 << 20, MaxBytes: 64 << 10, SegmentBytes: 16 << 10}
	s3, _ := mustOpen(t, dir2, o2)
	big := bytes.Repeat([]byte("y"), 1000)
	for i := 1; i <= 1000; i++ {
		s3.Append("big", uint64(i), big)
	}
	s3.Close()
	if total, _ := logBytes(t, dir2); total > 2*(64<<10+16<<10)+16<<10 {
		t.Fatalf("%d bytes on disk for a 64 KiB bound", total)
	}
	_, ss = mustOpen(t, dir2, o2)
	if n := len(find(ss, "big").Events); n != 64 && n != 65 {
		t.Fatalf("recovered %d big events, want the 64 KiB bound", n)
	}
}

// TestManySessionsFewFiles: 20,000 sessions cost a few files, not a
// directory each (issue 10 finding 7: ~30,000 inodes), and all come back.
func TestManySessionsFewFiles(t *testing.T) {
	dir := t.TempDir()
	// A queue that holds all 20,000 events: this test is about the layout,
	// and a writer starved of CPU (race detector, a busy machine) would
	// otherwise drop events by design (TestCreatesAreNeverDropped covers that).
	s, _ := mustOpen(t, dir, Options{QueueRecords: 1 << 16})
	for i := 0; i < 20000; i++ {
		sid := fmt.Sprintf("sess-%05d", i)
		s.Create(sid)
		s.Append(sid, 1, body(sid, 1))
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if st := s.Stats(); st.Dropped != 0 {
		t.Fatalf("dropped %d", st.Dropped)
	}
	var files int
	filepath.Walk(dir, func(string, os.FileInfo, error) error { files++; return nil })
	if files > 8 {
		t.Fatalf("%d files and directories for 20,000 sessions", files)
	}
	_, ss := mustOpen(t, dir, Options{})
	if len(ss) != 20000 {
		t.Fatalf("recovered %d sessions", len(ss))
	}
	checkEvents(t, ss[123].ID, ss[123].Events, 1, 1)
}

// TestCreatesAreNeverDropped: a full queue drops events (counted) but
// never a session's creation (finding 7: sessions lost on a clean stop).
func TestCreatesAreNeverDropped(t *testing.T) {
	dir := t.TempDir()
	s, _ := mustOpen(t, dir, Options{QueueRecords: 10})
	for i := 0; i < 5000; i++ {
		s.Create(fmt.Sprintf("c%04d", i))
	}
	s.Close()
	_, ss := mustOpen(t, dir, Options{})
	if len(ss) != 5000 {
		t.Fatalf("recovered %d of 5000 sessions", len(ss))
	}
}

// tiny keeps records short so that cutting at every byte stays quick.
func tiny(i int) []byte { return []byte(fmt.Sprintf(`{"n":%d}`, i)) }

func TestTornTailAtEveryOffset(t *testing.T) {
	src := t.TempDir()
	s, _ := mustOpen(t, src, Options{})
	for i := 1; i <= 3; i++ {
		s.Append("a", uint64(i), tiny(i))
	}
	s.Close()
	seg := filepath.Join(src, "log", segName(1))
	full, err := os.ReadFile(seg)
	if err != nil {
		t.Fatal(err)
	}
	created := len(segMagic) + headerLen + 1 + 8   // the create record of "a"
	rec2 := created + headerLen + 1 + len(tiny(1)) // end of record 1
	rec3 := rec2 + headerLen + 1 + len(tiny(2))
	for cut := 0; cut < len(full); cut++ {
		dir := t.TempDir()
		copyTree(t, src, dir)
		os.Remove(filepath.Join(dir, "clean"))
		p := filepath.Join(dir, "log", segName(1))
		if err := os.WriteFile(p, full[:cut], 0o600); err != nil {
			t.Fatal(err)
		}
		s, ss, err := Open(dir, Options{})
		if err != nil {
			t.Fatalf("cut %d: %v", cut, err)
		}
		want := 0
		switch {
		case cut >= rec3:
			want = 2
		case cut >= rec2:
			want = 1
		}
		a := find(ss, "a")
		if a == nil {
			if cut >= created {
				t.Fatalf("cut %d: session lost", cut)
			}
			s.Close()
			continue
		}
		if len(a.Events) != want {
			t.Fatalf("cut %d: %d events, want %d", cut, len(a.Events), want)
		}
		for k, e := range a.Events {
			if e.Seq != uint64(k+1) || !bytes.Equal(e.Body, tiny(k+1)) {
				t.Fatalf("cut %d: event %d = %d %q", cut, k, e.Seq, e.Body)
			}
		}
		if a.Seq != uint64(want)+(Options{}).LossBound() {
			t.Fatalf("cut %d: seq %d, want %d + loss bound", cut, a.Seq, want)
		}
		// The torn bytes are gone and the log appends cleanly after them.
		next := a.Seq + 1
		s.Append("a", next, tiny(99))
		s.Close()
		s2, ss, err := Open(dir, Options{})
		if err != nil {
			t.Fatal(err)
		}
		s2.Close()
		a = find(ss, "a")
		if n := len(a.Events); n != want+1 || a.Events[n-1].Seq != next || !bytes.Equal(a.Events[n-1].Body, tiny(99)) {
			t.Fatalf("cut %d: after append got %d events, last %+v", cut, n, a.Events[n-1])
		}
	}
}

func TestCorruptMiddleSegmentLeavesHole(t *testing.T) {
	dir := t.TempDir()
	o := Options{MaxEvents: 40, SegmentBytes: 1024} // ~8 events per segment
	s, _ := mustOpen(t, dir, o)
	for i := 1; i <= 30; i++ {
		s.Append("a", uint64(i), body("a", i))
	}
	s.Close()
	// Flip a byte inside event 14's body; the events after it in its
	// segment are lost, the later segments still count.
	segs, _ := filepath.Glob(filepath.Join(dir, "log", "*.seg"))
	sort.Strings(segs)
	lost := map[uint64]bool{}
	for k, p := range segs {
		data, _ := os.ReadFile(p)
		hit, pos := -1, len(segMagic)
		parseRecords(data[len(segMagic):], func(r record) {
			if r.kind == kindEvent && r.seq == 14 {
				hit = pos
			}
			pos += len(r.raw)
			if hit >= 0 && r.kind == kindEvent {
				lost[r.seq] = true
			}
		})
		if hit >= 0 {
			if k == len(segs)-1 {
				t.Fatal("event 14 is in the last segment; the test needs it in the middle")
			}
			data[hit+headerLen+len("a")+5] ^= 0xff
			os.WriteFile(p, data, 0o600)
			break
		}
	}
	if !lost[14] {
		t.Fatal("event 14 not found")
	}
	s2, ss, err := Open(dir, o)
	if err != nil {
		t.Fatal(err)
	}
	a := find(ss, "a")
	var seqs, want []uint64
	for _, e := range a.Events {
		seqs = append(seqs, e.Seq)
	}
	for i := uint64(1); i <= 30; i++ {
		if !lost[i] {
			want = append(want, i)
		}
	}
	if fmt.Sprint(seqs) != fmt.Sprint(want) {
		t.Fatalf("seqs %v, want %v", seqs, want)
	}
	if a.Seq != 30 {
		t.Fatalf("seq %d after a clean close, want 30", a.Seq)
	}
	if r := s2.Recovery(); r.Corrupt != 1 || r.Sessions != 1 {
		t.Fatalf("recovery %+v", r)
	}
	s2.Close()
}

func TestDroppedTailIsNotReused(t *testing.T) {
	dir := t.TempDir()
	o := Options{QueueBytes: 64}
	s, _ := mustOpen(t, dir, o)
	s.Append("a", 1, []byte("small"))
	s.Append("a", 2, bytes.Repeat([]byte("z"), 100)) // over QueueBytes: dropped
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s.Append("a", 3, []byte("late")) // after Close: dropped
	if st := s.Stats(); st.Dropped != 2 || st.Written != 1 {
		t.Fatalf("stats %+v", st)
	}
	_, ss := mustOpen(t, dir, o)
	a := find(ss, "a")
	if len(a.Events) != 1 || a.Seq != 2 {
		t.Fatalf("recovered %d events, seq %d; want 1 event and seq 2 (the dropped one is reserved)", len(a.Events), a.Seq)
	}
}

func TestLockAndFormat(t *testing.T) {
	dir := t.TempDir()
	s, _ := mustOpen(t, dir, Options{})
	if _, _, err := Open(dir, Options{}); !errors.Is(err, ErrLocked) {
		t.Fatalf("second Open: %v, want ErrLocked", err)
	}
	s.Close()
	s, _ = mustOpen(t, dir, Options{})
	s.Close()

	other := t.TempDir()
	os.WriteFile(filepath.Join(other, "notes.txt"), []byte("mine"), 0o600)
	if _, _, err := Open(other, Options{}); !errors.Is(err, ErrFormat) {
		t.Fatalf("Open of a foreign dir: %v, want ErrFormat", err)
	}
	os.WriteFile(filepath.Join(dir, "FORMAT"), []byte("agentbridge state 99\n"), 0o600)
	if _, _, err := Open(dir, Options{}); !errors.Is(err, ErrFormat) {
		t.Fatalf("Open of a newer format: %v, want ErrFormat", err)
	}
}

func TestManySessionsInterleaved(t *testing.T) {
	dir := t.TempDir()
	o := Options{SyncInterval: -1}
	s, _ := mustOpen(t, dir, o)
	for i := 1; i <= 20; i++ {
		for k := 0; k < 10; k++ {
			sid := "s" + strconv.Itoa(k)
			s.Append(sid, uint64(i), body(sid, i))
		}
	}
	s.Close()
	_, ss := mustOpen(t, dir, o)
	if len(ss) != 10 {
		t.Fatalf("%d sessions", len(ss))
	}
	for _, x := range ss {
		checkEvents(t, x.ID, x.Events, 1, 20)
	}
}

// TestKill9 runs a writer in a child process and kills it with SIGKILL:
// once while idle after every record was written, once in the middle of a
// stream. What is recovered is an exact prefix of what was appended, and
// the seq resumes past anything that may have been lost.
func TestKill9(t *testing.T) {
	for _, mode := range []string{"idle", "streaming"} {
		t.Run(mode, func(t *testing.T) {
			dir := t.TempDir()
			cmd := exec.Command(os.Args[0], "-test.run=^TestKill9Child$")
			cmd.Env = append(os.Environ(), "STORE_CHILD_DIR="+dir, "STORE_CHILD_MODE="+mode)
			out, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			sc := bufio.NewScanner(out)
			written := -1
			for sc.Scan() {
				if v, ok := strings.CutPrefix(sc.Text(), "written "); ok {
					written, _ = strconv.Atoi(v)
					break
				}
			}
			if written < 0 {
				t.Fatalf("child said nothing: %v", sc.Err())
			}
			cmd.Process.Kill()
			cmd.Wait()
			s, ss, err := Open(dir, Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			a := find(ss, "a")
			if a == nil {
				t.Fatalf("session lost")
			}
			if len(a.Events) < written {
				t.Fatalf("recovered %d events, but %d had been written before the kill", len(a.Events), written)
			}
			checkEvents(t, "a", a.Events, 1, len(a.Events))
			if a.Seq != uint64(len(a.Events))+(Options{}).LossBound() {
				t.Fatalf("seq %d, want %d + loss bound", a.Seq, len(a.Events))
			}
		})
	}
}

func TestKill9Child(t *testing.T) {
	dir := os.Getenv("STORE_CHILD_DIR")
	if dir == "" {
		t.Skip("helper process for TestKill9")
	}
	s, _, err := Open(dir, Options{})
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	const n = 8000 // under MaxEvents: nothing is trimmed
	for i := 1; i <= n; i++ {
		s.Append("a", uint64(i), body("a", i))
		if os.Getenv("STORE_CHILD_MODE") == "streaming" && i == n/2 {
			// Killed while appending: what write(2) has taken by now must
			// survive, the rest may not. At least the first batch, so that
			// the session itself is on disk.
			for s.Stats().Written == 0 {
				time.Sleep(time.Millisecond)
			}
			fmt.Printf("written %d\n", s.Stats().Written)
		}
	}
	if os.Getenv("STORE_CHILD_MODE") == "idle" {
		for s.Stats().Written < n {
			time.Sleep(time.Millisecond)
		}
		fmt.Printf("written %d\n", n)
	}
	select {} // wait for the kill
}

func copyTree(t *testing.T, src, dst string) {
	t.Helper()
	err := filepath.Walk(src, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		target := filepath.Join(dst, rel)
		if fi.IsDir() {
			return os.MkdirAll(target, 0o700)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(target, b, 0o600)
	})
	if err != nil {
		t.Fatal(err)
	}
}

func FuzzParseRecords(f *testing.F) {
	var seed []byte
	for i := 1; i <= 3; i++ {
		seed = appendRecord(seed, kindEvent, "a", uint64(i), body("a", i))
	}
	seed = appendRecord(seed, kindCreate, "b", 0, []byte("12345678"))
	seed = appendRecord(seed, kindMark, "a", 9, nil)
	f.Add(seed)
	f.Add(seed[:len(seed)-3])
	f.Add([]byte{})
	f.Add(bytes.Repeat([]byte{0xff}, 40))
	f.Fuzz(func(t *testing.T, data []byte) {
		var got []record
		good, err := parseRecords(data, func(r record) { got = append(got, r) })
		if good > len(data) || (err == nil) != (good == len(data)) {
			t.Fatalf("good %d of %d, err %v", good, len(data), err)
		}
		// Re-encoding what was accepted reproduces the valid prefix.
		var re []byte
		for _, r := range got {
			re = appendRecord(re, r.kind, r.id, r.seq, r.body)
		}
		if !bytes.Equal(re, data[:good]) {
			t.Fatalf("re-encoded prefix differs")
		}
	})
}

func TestSegmentNamesSortNumerically(t *testing.T) {
	names := []string{segName(10), segName(9), segName(1 << 40)}
	sort.Strings(names)
	if names[0] != segName(9) || names[2] != segName(1<<40) {
		t.Fatalf("%v", names)
	}
}

// BenchmarkWriterThroughput measures how fast the writer drains: records
// of a 200-byte event, appended with a queue large enough to hold them
// all, timed until Close has written and fsynced everything.
func BenchmarkWriterThroughput(b *testing.B) {
	ev := bytes.Repeat([]byte("e"), 200)
	s, _, err := Open(b.TempDir(), Options{QueueRecords: b.N + 1, QueueBytes: (b.N + 1) * len(ev)})
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(ev)))
	b.ResetTimer()
	for i := 1; i <= b.N; i++ {
		s.Append("s"+strconv.Itoa(i%4), uint64(i), ev)
	}
	if err := s.Close(); err != nil {
		b.Fatal(err)
	}
	if st := s.Stats(); st.Dropped != 0 {
		b.Fatalf("dropped %d", st.Dropped)
	}
}

// TestDeleteForgetsSession: a deleted session does not come back, its
// records are rewritten away (not only hidden), and the same id can be
// created afresh.
func TestDeleteForgetsSession(t *testing.T) {
	dir := t.TempDir()
	o := Options{SegmentBytes: 2048}
	s, _ := mustOpen(t, dir, o)
	for i := 1; i <= 50; i++ {
		s.Append("a", uint64(i), body("a", i))
		s.Append("b", uint64(i), body("b", i))
	}
	s.Delete("a")
	s.Create("c")
	s.Close()
	for _, p := range func() []string { m, _ := filepath.Glob(filepath.Join(dir, "log", "*.seg")); return m }() {
		data, _ := os.ReadFile(p)
		parseRecords(data[len(segMagic):], func(r record) {
			if r.id == "a" && r.kind != kindDelete {
				t.Fatalf("%s still holds a record of the deleted session: %c %d", p, r.kind, r.seq)
			}
		})
	}
	s2, ss := mustOpen(t, dir, o)
	if find(ss, "a") != nil || find(ss, "c") == nil {
		t.Fatalf("recovered %d sessions: a=%v c=%v", len(ss), find(ss, "a"), find(ss, "c"))
	}
	checkEvents(t, "b", find(ss, "b").Events, 1, 50)
	s2.Append("a", 1, body("a", 1)) // the id, afresh
	s2.Close()
	_, ss = mustOpen(t, dir, o)
	checkEvents(t, "a", find(ss, "a").Events, 1, 1)
}

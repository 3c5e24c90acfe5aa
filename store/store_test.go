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

func TestRetentionRotatesAndDeletesSegments(t *testing.T) {
	dir := t.TempDir()
	o := Options{MaxEvents: 100, MaxBytes: 1 << 20}
	s, _ := mustOpen(t, dir, o)
	for i := 1; i <= 1000; i++ {
		s.Append("a", uint64(i), body("a", i))
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	segs, _ := filepath.Glob(filepath.Join(dir, "sessions", hashName("a"), "*.seg"))
	// 25 events per segment; at most the bound plus one segment is kept.
	if len(segs) < 4 || len(segs) > 5 {
		t.Fatalf("%d segments on disk, want 4 or 5: %v", len(segs), segs)
	}
	s2, ss := mustOpen(t, dir, o)
	a := find(ss, "a")
	if n := len(a.Events); n < 100 || n > 125 {
		t.Fatalf("recovered %d events, want 100..125", n)
	}
	checkEvents(t, "a", a.Events, 1001-len(a.Events), 1000)
	// Appending continues in the recovered active segment.
	for i := 1001; i <= 1010; i++ {
		s2.Append("a", uint64(i), body("a", i))
	}
	s2.Close()
	_, ss = mustOpen(t, dir, o)
	a = find(ss, "a")
	checkEvents(t, "a", a.Events, 1011-len(a.Events), 1010)

	// Byte bound: big bodies rotate by size.
	dir2 := t.TempDir()
	o2 := Options{MaxEvents: 1 << 20, MaxBytes: 64 << 10}
	s3, _ := mustOpen(t, dir2, o2)
	big := bytes.Repeat([]byte("y"), 1000)
	for i := 1; i <= 1000; i++ {
		s3.Append("big", uint64(i), big)
	}
	s3.Close()
	var total int64
	segs, _ = filepath.Glob(filepath.Join(dir2, "sessions", hashName("big"), "*.seg"))
	for _, p := range segs {
		fi, _ := os.Stat(p)
		total += fi.Size()
	}
	if total > 64<<10+16<<10+2<<10 {
		t.Fatalf("%d bytes on disk for a 64 KiB bound", total)
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
	seg := filepath.Join(src, "sessions", hashName("a"), segName(1))
	full, err := os.ReadFile(seg)
	if err != nil {
		t.Fatal(err)
	}
	rec2 := len(segMagic) + headerLen + len(tiny(1)) // end of record 1
	rec3 := rec2 + headerLen + len(tiny(2))
	for cut := 0; cut < len(full); cut++ {
		dir := t.TempDir()
		copyTree(t, src, dir)
		os.Remove(filepath.Join(dir, "clean"))
		p := filepath.Join(dir, "sessions", hashName("a"), segName(1))
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
	o := Options{MaxEvents: 40} // 10 events per segment
	s, _ := mustOpen(t, dir, o)
	for i := 1; i <= 30; i++ {
		s.Append("a", uint64(i), body("a", i))
	}
	s.Close()
	// Flip a byte inside event 14's body (segment 11..20).
	p := filepath.Join(dir, "sessions", hashName("a"), segName(11))
	data, _ := os.ReadFile(p)
	off := len(segMagic)
	for i := 11; i < 14; i++ {
		off += headerLen + len(body("a", i))
	}
	data[off+headerLen+5] ^= 0xff
	os.WriteFile(p, data, 0o600)
	s2, ss, err := Open(dir, o)
	if err != nil {
		t.Fatal(err)
	}
	a := find(ss, "a")
	var seqs []uint64
	for _, e := range a.Events {
		seqs = append(seqs, e.Seq)
	}
	want := []uint64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30}
	if fmt.Sprint(seqs) != fmt.Sprint(want) {
		t.Fatalf("seqs %v, want %v", seqs, want)
	}
	if a.Seq != 30 {
		t.Fatalf("seq %d after a clean close, want 30", a.Seq)
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

func TestManySessionsFewDescriptors(t *testing.T) {
	dir := t.TempDir()
	o := Options{MaxOpenFiles: 3, SyncInterval: -1}
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
			fmt.Printf("written %d\n", 0)
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
		seed = appendRecord(seed, kindEvent, uint64(i), body("a", i))
	}
	seed = appendRecord(seed, kindMark, 9, nil)
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
			re = appendRecord(re, r.kind, r.seq, r.body)
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

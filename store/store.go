package store

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

const (
	formatLine = "agentbridge state 1\n"
	kindCreate = 'C' // queue-only: make the session's directory and meta
	segSuffix  = ".seg"
)

// Event is one persisted event.
type Event struct {
	Seq  uint64
	Body []byte
}

// Session is a session recovered from disk.
type Session struct {
	ID      string
	Created time.Time
	// Seq is the highest seq the session may already have used: the next
	// event must get Seq+1. After an unclean stop it is LossBound past the
	// last record on disk.
	Seq uint64
	// Events are the kept events in ascending seq, possibly with holes
	// (records that were dropped or lost).
	Events []Event
}

// Stats are the store's counters.
type Stats struct {
	Appended    uint64 // records accepted into the queue
	Dropped     uint64 // records refused: queue full or store closed
	Written     uint64 // records handed to write(2)
	WriteErrors uint64 // failed writes (their records are lost)
	Syncs       uint64 // fsyncs of segment files
	Queued      int    // records waiting for the writer now
	Sessions    int    // sessions known on disk (as of the last batch)
}

// Store persists session events under one directory.
type Store struct {
	dir  string
	opt  Options
	log  *slog.Logger
	lock *os.File

	mu        sync.Mutex // guards the fields up to wake
	queue     []rec
	spare     []rec
	qbytes    int
	closed    bool
	droppedHi map[string]uint64 // highest seq dropped per session

	wake     chan struct{}
	done     chan struct{}
	closeErr error

	appended, dropped, written, writeErrors, syncs atomic.Uint64
	nsessions                                      atomic.Int64

	// Owned by the writer goroutine (and by Open before it starts it).
	sess      map[string]*sessFile
	open      []*sessFile // files with an open descriptor
	retired   []*os.File  // closed for appending, written since their last fsync
	touched   []*sessFile
	clock     uint64 // batch counter, for LRU
	dirtyDirs map[string]bool
	errLogAt  time.Time
	errQuiet  int
}

type rec struct {
	kind    byte
	session string
	seq     uint64
	body    []byte
}

// segment is one segment file's bookkeeping (events only, not marks).
type segment struct {
	first uint64 // from the file name
	path  string
	count int
	bytes int
}

// sessFile is a session's on-disk state. Owned by the writer goroutine.
type sessFile struct {
	id      string
	dir     string
	segs    []segment
	count   int    // events in segs
	bytes   int    // body bytes (+1 each, as the hub counts) in segs
	lastSeq uint64 // highest seq on disk (events or marks)
	hi      uint64 // seq the session must resume after (restored or dropped)

	f       *os.File // active segment (the last of segs), nil when closed
	size    int64    // active segment's size on disk
	dirty   bool     // written since its last fsync
	broken  bool     // the last write failed: start a new segment
	lastUse uint64
	touched bool

	buf       []byte // records for the active segment, not yet written
	pendCount int
	pendBytes int
	pendLast  uint64
}

// Open opens (creating if needed) the state directory dir, recovers every
// session in it and starts the writer goroutine. The directory is locked
// until Close; a second daemon on the same directory gets ErrLocked.
// Call from one goroutine, before the hub serves anyone.
func Open(dir string, o Options) (*Store, []Session, error) {
	o.fill()
	if err := prepareDir(dir); err != nil {
		return nil, nil, err
	}
	lock, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, nil, fmt.Errorf("state dir: %w", err)
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		lock.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, nil, fmt.Errorf("%w: %s", ErrLocked, dir)
		}
		return nil, nil, fmt.Errorf("state dir: lock %s: %w", dir, err)
	}
	s := &Store{
		dir: dir, opt: o, log: o.Logger, lock: lock,
		droppedHi: make(map[string]uint64),
		wake:      make(chan struct{}, 1),
		done:      make(chan struct{}),
		sess:      make(map[string]*sessFile),
		dirtyDirs: make(map[string]bool),
	}
	fail := func(err error) (*Store, []Session, error) {
		lock.Close()
		return nil, nil, err
	}
	cleanPath := filepath.Join(dir, "clean")
	_, err = os.Stat(cleanPath)
	clean := err == nil
	if clean {
		// From now on a crash must look unclean.
		if err := os.Remove(cleanPath); err != nil {
			return fail(fmt.Errorf("state dir: %w", err))
		}
		if err := syncDir(dir); err != nil {
			return fail(fmt.Errorf("state dir: %w", err))
		}
	}
	sessions, err := s.recover(clean)
	if err != nil {
		return fail(err)
	}
	s.nsessions.Store(int64(len(s.sess)))
	go s.run()
	return s, sessions, nil
}

// prepareDir creates dir and its FORMAT file, or checks an existing one.
// A non-empty directory without FORMAT is refused rather than adopted: it
// is more likely a mistyped path than an old state directory.
func prepareDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	fp := filepath.Join(dir, "FORMAT")
	b, err := os.ReadFile(fp)
	switch {
	case err == nil:
		if string(b) != formatLine {
			return fmt.Errorf("%w: %s holds FORMAT %q, want %q", ErrFormat, dir, strings.TrimSpace(string(b)), strings.TrimSpace(formatLine))
		}
	case errors.Is(err, fs.ErrNotExist):
		ents, err := os.ReadDir(dir)
		if err != nil {
			return fmt.Errorf("state dir: %w", err)
		}
		for _, e := range ents {
			switch e.Name() {
			case "lock", "sessions", "clean":
			default:
				return fmt.Errorf("%w: %s is not empty and has no FORMAT file (found %q)", ErrFormat, dir, e.Name())
			}
		}
		if err := writeFileSync(fp, []byte(formatLine)); err != nil {
			return fmt.Errorf("state dir: %w", err)
		}
	default:
		return fmt.Errorf("state dir: %w", err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "sessions"), 0o700); err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	return syncDir(dir)
}

// Create records that a session exists (so it survives a restart even with
// no events). Safe from any goroutine; never blocks on I/O.
func (s *Store) Create(sessionID string) { s.push(rec{kind: kindCreate, session: sessionID}) }

// Append queues one event for writing. body must not be modified
// afterwards (it is written later, without a copy). Safe from any
// goroutine; never blocks on I/O: when the queue is full the record is
// dropped and counted.
func (s *Store) Append(sessionID string, seq uint64, body []byte) {
	s.push(rec{kind: kindEvent, session: sessionID, seq: seq, body: body})
}

func (s *Store) push(r rec) {
	s.mu.Lock()
	if s.closed || len(s.queue) >= s.opt.QueueRecords || s.qbytes+len(r.body) > s.opt.QueueBytes {
		if r.kind == kindEvent && !s.closed && s.droppedHi[r.session] < r.seq {
			s.droppedHi[r.session] = r.seq
		}
		s.mu.Unlock()
		s.dropped.Add(1)
		return
	}
	wasEmpty := len(s.queue) == 0
	s.queue = append(s.queue, r)
	s.qbytes += len(r.body)
	s.mu.Unlock()
	s.appended.Add(1)
	if wasEmpty {
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}
}

// Stats returns the store's counters. Safe from any goroutine.
func (s *Store) Stats() Stats {
	s.mu.Lock()
	q := len(s.queue)
	s.mu.Unlock()
	return Stats{
		Appended: s.appended.Load(), Dropped: s.dropped.Load(), Written: s.written.Load(),
		WriteErrors: s.writeErrors.Load(), Syncs: s.syncs.Load(), Queued: q, Sessions: int(s.nsessions.Load()),
	}
}

// Close writes everything queued, fsyncs, marks the directory clean and
// unlocks it. Later Appends are dropped. Safe from any goroutine; returns
// when the writer has finished.
func (s *Store) Close() error {
	s.mu.Lock()
	already := s.closed
	s.closed = true
	s.mu.Unlock()
	if !already {
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}
	<-s.done
	return s.closeErr
}

// hashName is a session's directory name.
func hashName(id string) string {
	h := sha256.Sum256([]byte(id))
	return hex.EncodeToString(h[:16])
}

type metaFile struct {
	SessionID string    `json:"sessionId"`
	Created   time.Time `json:"created"`
}

func segName(first uint64) string { return fmt.Sprintf("%020d%s", first, segSuffix) }

// recover loads every session directory. Corruption is logged and
// contained; I/O errors fail Open.
func (s *Store) recover(clean bool) ([]Session, error) {
	root := filepath.Join(s.dir, "sessions")
	ents, err := os.ReadDir(root)
	if err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}
	skip := uint64(0)
	if !clean {
		skip = s.opt.LossBound()
	}
	var out []Session
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		ss, err := s.loadSession(filepath.Join(root, e.Name()))
		if err != nil {
			return nil, err
		}
		if ss == nil {
			continue
		}
		ss.Seq += skip
		s.sess[ss.ID].hi = ss.Seq
		out = append(out, *ss)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	if !clean && len(out) > 0 {
		s.log.Warn("state dir was not closed cleanly; recovered sessions resume their seq past what may have been lost", "dir", s.dir, "sessions", len(out), "skip", skip)
	}
	return out, nil
}

func (s *Store) loadSession(dir string) (*Session, error) {
	mb, err := os.ReadFile(filepath.Join(dir, "meta"))
	if errors.Is(err, fs.ErrNotExist) {
		// A crash between mkdir and meta: nothing was ever written here.
		s.log.Warn("state dir: removing a session directory without meta", "dir", dir)
		return nil, os.RemoveAll(dir)
	}
	if err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}
	var m metaFile
	if err := json.Unmarshal(mb, &m); err != nil || m.SessionID == "" || hashName(m.SessionID) != filepath.Base(dir) {
		s.log.Warn("state dir: unreadable session meta; session skipped", "dir", dir, "err", err)
		return nil, nil
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}
	sf := &sessFile{id: m.SessionID, dir: dir}
	var firsts []uint64
	for _, e := range ents {
		name, ok := strings.CutSuffix(e.Name(), segSuffix)
		if !ok || e.IsDir() {
			continue
		}
		first, err := strconv.ParseUint(name, 10, 64)
		if err != nil {
			continue
		}
		firsts = append(firsts, first)
	}
	sort.Slice(firsts, func(i, j int) bool { return firsts[i] < firsts[j] })
	var events []Event
	var last, hi uint64
	for i, first := range firsts {
		path := filepath.Join(dir, segName(first))
		isLast := i == len(firsts)-1
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("state dir: %w", err)
		}
		if len(data) < len(segMagic) || string(data[:len(segMagic)]) != segMagic {
			if len(data) < len(segMagic) && segMagic[:len(data)] == string(data) {
				// Created but cut before its first record was written.
				if err := os.Remove(path); err != nil {
					return nil, fmt.Errorf("state dir: %w", err)
				}
				continue
			}
			s.log.Warn("state dir: segment without its magic; renamed to .corrupt and ignored", "file", path)
			if err := os.Rename(path, path+".corrupt"); err != nil {
				return nil, fmt.Errorf("state dir: %w", err)
			}
			continue
		}
		seg := segment{first: first, path: path}
		good, perr := parseRecords(data[len(segMagic):], func(r record) {
			if r.kind == kindMark {
				hi = max(hi, r.seq)
				return
			}
			if r.seq == 0 || r.seq <= last {
				return
			}
			events = append(events, Event{Seq: r.seq, Body: r.body})
			last = r.seq
			seg.count++
			seg.bytes += len(r.body) + 1
		})
		size := int64(len(segMagic) + good)
		if perr != nil {
			if isLast {
				s.log.Warn("state dir: truncating a torn or corrupt tail (a write cut by a crash)", "file", path, "err", perr, "lost_bytes", int64(len(data))-size)
				if err := os.Truncate(path, size); err != nil {
					return nil, fmt.Errorf("state dir: %w", err)
				}
			} else {
				s.log.Warn("state dir: corrupt record; the rest of this segment is ignored", "file", path, "err", perr, "lost_bytes", int64(len(data))-size)
			}
		}
		// Appending after ignored bytes would hide the new records from the
		// next recovery: a segment that ends up last and is corrupt inside
		// gets no more records.
		sf.broken = perr != nil && !isLast
		sf.segs = append(sf.segs, seg)
		sf.count += seg.count
		sf.bytes += seg.bytes
		sf.size = size
	}
	sf.lastSeq = max(last, hi)
	s.sess[sf.id] = sf
	s.trim(sf)
	if len(sf.segs) > 0 {
		// Events of deleted segments are gone from disk; drop them here too.
		keepFrom := sf.segs[0].first
		i := sort.Search(len(events), func(i int) bool { return events[i].Seq >= keepFrom })
		events = events[i:]
	}
	s.syncDirs()
	return &Session{ID: m.SessionID, Created: m.Created, Seq: sf.lastSeq, Events: events}, nil
}

// run is the writer goroutine.
func (s *Store) run() {
	defer close(s.done)
	var tick <-chan time.Time
	if s.opt.SyncInterval > 0 {
		t := time.NewTicker(s.opt.SyncInterval)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case <-s.wake:
		case <-tick:
			s.syncAll()
			continue
		}
		for {
			batch, closed := s.take()
			if len(batch) > 0 {
				s.writeBatch(batch)
				if s.opt.SyncInterval < 0 {
					s.syncAll()
				}
				s.recycle(batch)
				continue
			}
			if closed {
				s.closeErr = s.finish()
				return
			}
			break
		}
	}
}

func (s *Store) take() ([]rec, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.queue
	s.queue, s.spare = s.spare[:0], nil
	s.qbytes = 0
	return b, s.closed
}

func (s *Store) recycle(b []rec) {
	clear(b) // drop the bodies now
	s.mu.Lock()
	if s.spare == nil {
		s.spare = b[:0]
	}
	s.mu.Unlock()
}

func (s *Store) writeBatch(b []rec) {
	s.clock++
	for i := range b {
		r := &b[i]
		if r.kind == kindDelete {
			s.forget(r.session)
			continue
		}
		sf := s.session(r.session)
		if sf == nil || r.kind == kindCreate || r.seq <= sf.lastSeq {
			continue
		}
		if !sf.touched {
			sf.touched = true
			s.touched = append(s.touched, sf)
		}
		s.appendRecord(sf, kindEvent, r.seq, r.body)
	}
	for _, sf := range s.touched {
		s.flush(sf)
		sf.touched = false
		s.trim(sf)
	}
	clear(s.touched)
	s.touched = s.touched[:0]
	s.nsessions.Store(int64(len(s.sess)))
}

// session returns the session's state, creating its directory and meta on
// first use. Nil when that failed (logged).
func (s *Store) session(id string) *sessFile {
	if sf := s.sess[id]; sf != nil {
		return sf
	}
	dir := filepath.Join(s.dir, "sessions", hashName(id))
	meta, _ := json.Marshal(metaFile{SessionID: id, Created: time.Now().UTC()})
	err := os.MkdirAll(dir, 0o700)
	if err == nil {
		err = writeFileSync(filepath.Join(dir, "meta"), meta)
	}
	if err == nil {
		// meta must be durable before any segment: recovery names the
		// session from it.
		err = syncDir(dir)
	}
	if err == nil {
		err = syncDir(filepath.Join(s.dir, "sessions"))
	}
	if err != nil {
		s.writeErrors.Add(1)
		s.logErr("state dir: cannot create a session directory; its events are not persisted", "session", id, "err", err)
		return nil
	}
	sf := &sessFile{id: id, dir: dir}
	s.sess[id] = sf
	return sf
}

// appendRecord buffers one record for the session's active segment,
// rotating first when the segment is full or broken.
func (s *Store) appendRecord(sf *sessFile, kind byte, seq uint64, body []byte) {
	if len(sf.segs) == 0 || sf.broken || s.full(sf) {
		s.flush(sf)
		s.rotate(sf, seq)
	}
	sf.buf = appendRecord(sf.buf, kind, seq, body)
	sf.pendLast = seq
	if kind == kindEvent {
		sf.pendCount++
		sf.pendBytes += len(body) + 1
	}
}

func (s *Store) full(sf *sessFile) bool {
	seg := &sf.segs[len(sf.segs)-1]
	return sf.size+int64(len(sf.buf)) >= int64(s.opt.SegmentBytes) || seg.count+sf.pendCount >= s.opt.segmentEvents()
}

// rotate closes the active segment and starts a new one named by seq.
// Precondition: sf.buf is empty (flushed).
func (s *Store) rotate(sf *sessFile, seq uint64) {
	s.closeFile(sf)
	sf.segs = append(sf.segs, segment{first: seq, path: filepath.Join(sf.dir, segName(seq))})
	sf.size = 0
	sf.broken = false
	sf.buf = append(sf.buf[:0], segMagic...)
	s.dirtyDirs[sf.dir] = true
}

// flush writes the session's buffered records with one write(2).
func (s *Store) flush(sf *sessFile) {
	if len(sf.buf) == 0 {
		return
	}
	f, err := s.file(sf)
	n := 0
	if err == nil {
		n, err = f.Write(sf.buf)
	}
	if err != nil {
		s.writeErrors.Add(1)
		s.logErr("state dir: write failed; these events are not persisted", "session", sf.id, "err", err)
		if f != nil && n > 0 {
			// Leave no torn record in the middle of the file; the next
			// record goes to a new segment in any case.
			_ = f.Truncate(sf.size)
		}
		sf.broken = true
	} else {
		seg := &sf.segs[len(sf.segs)-1]
		seg.count += sf.pendCount
		seg.bytes += sf.pendBytes
		sf.count += sf.pendCount
		sf.bytes += sf.pendBytes
		sf.lastSeq = max(sf.lastSeq, sf.pendLast)
		sf.size += int64(n)
		sf.dirty = true
		s.written.Add(uint64(sf.pendCount))
	}
	sf.pendCount, sf.pendBytes = 0, 0
	if cap(sf.buf) > 1<<20 {
		sf.buf = nil
	} else {
		sf.buf = sf.buf[:0]
	}
}

// file returns the active segment's descriptor, opening it (and closing
// the least recently used one past MaxOpenFiles).
func (s *Store) file(sf *sessFile) (*os.File, error) {
	sf.lastUse = s.clock
	if sf.f != nil {
		return sf.f, nil
	}
	if len(s.open) >= s.opt.MaxOpenFiles {
		lru := s.open[0]
		for _, o := range s.open[1:] {
			if o.lastUse < lru.lastUse {
				lru = o
			}
		}
		s.closeFile(lru)
	}
	f, err := os.OpenFile(sf.segs[len(sf.segs)-1].path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	sf.f = f
	s.open = append(s.open, sf)
	return f, nil
}

// closeFile stops appending to the session's active segment. A file
// written since its last fsync keeps its descriptor until the next sync
// point, so rotation never waits for the disk on the write path.
func (s *Store) closeFile(sf *sessFile) {
	if sf.f == nil {
		return
	}
	if sf.dirty {
		s.retired = append(s.retired, sf.f)
		sf.dirty = false
		if len(s.retired) > s.opt.MaxOpenFiles {
			s.syncRetired(len(s.retired) / 2)
		}
	} else if err := sf.f.Close(); err != nil {
		s.logErr("state dir: close failed", "session", sf.id, "err", err)
	}
	sf.f = nil
	for i, o := range s.open {
		if o == sf {
			s.open = append(s.open[:i], s.open[i+1:]...)
			break
		}
	}
}

func (s *Store) syncFile(sf *sessFile) {
	if err := sf.f.Sync(); err != nil {
		s.writeErrors.Add(1)
		s.logErr("state dir: fsync failed", "session", sf.id, "err", err)
	}
	s.syncs.Add(1)
	sf.dirty = false
}

// syncAll fsyncs every written file and every directory whose entries
// changed.
func (s *Store) syncAll() {
	for _, sf := range s.open {
		if sf.dirty {
			s.syncFile(sf)
		}
	}
	s.syncRetired(len(s.retired))
	s.syncDirs()
}

// syncRetired fsyncs and closes the n oldest retired files.
func (s *Store) syncRetired(n int) {
	for _, f := range s.retired[:n] {
		if err := f.Sync(); err != nil {
			s.writeErrors.Add(1)
			s.logErr("state dir: fsync failed", "file", f.Name(), "err", err)
		}
		s.syncs.Add(1)
		if err := f.Close(); err != nil {
			s.logErr("state dir: close failed", "file", f.Name(), "err", err)
		}
	}
	clear(s.retired[:n])
	s.retired = append(s.retired[:0], s.retired[n:]...)
}

func (s *Store) syncDirs() {
	for d := range s.dirtyDirs {
		if err := syncDir(d); err != nil {
			s.logErr("state dir: fsync of a directory failed", "dir", d, "err", err)
		}
		delete(s.dirtyDirs, d)
	}
}

// trim deletes a session's oldest segments while the newer ones alone
// hold MaxEvents events or MaxBytes bytes.
func (s *Store) trim(sf *sessFile) {
	for len(sf.segs) > 1 {
		old := sf.segs[0]
		if sf.count-old.count < s.opt.MaxEvents && sf.bytes-old.bytes < s.opt.MaxBytes {
			return
		}
		if err := os.Remove(old.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			s.logErr("state dir: cannot delete an old segment", "file", old.path, "err", err)
			return
		}
		sf.count -= old.count
		sf.bytes -= old.bytes
		sf.segs = sf.segs[1:]
		s.dirtyDirs[sf.dir] = true
	}
}

// finish runs once the queue is closed and drained: it records seqs that
// were used but not persisted (so they are not reused), fsyncs everything
// and marks the directory clean.
func (s *Store) finish() error {
	s.mu.Lock()
	dropped := s.droppedHi
	s.droppedHi = nil
	s.mu.Unlock()
	for id, seq := range dropped {
		if sf := s.session(id); sf != nil && sf.hi < seq {
			sf.hi = seq
		}
	}
	for _, sf := range s.sess {
		if sf.hi > sf.lastSeq {
			s.appendRecord(sf, kindMark, sf.hi, nil)
			s.flush(sf)
		}
	}
	for len(s.open) > 0 {
		s.closeFile(s.open[0])
	}
	s.syncAll()
	var err error
	if s.writeErrors.Load() > 0 {
		err = fmt.Errorf("state dir: %d write errors; some events were not persisted", s.writeErrors.Load())
	}
	if e := writeFileSync(filepath.Join(s.dir, "clean"), nil); e != nil {
		err = errors.Join(err, fmt.Errorf("state dir: %w", e))
	} else if e := syncDir(s.dir); e != nil {
		err = errors.Join(err, fmt.Errorf("state dir: %w", e))
	}
	if e := s.lock.Close(); e != nil {
		err = errors.Join(err, fmt.Errorf("state dir: %w", e))
	}
	return err
}

// logErr logs at most one error every 10 seconds, counting the rest, so a
// full disk does not flood the log.
func (s *Store) logErr(msg string, args ...any) {
	now := time.Now()
	if now.Sub(s.errLogAt) < 10*time.Second {
		s.errQuiet++
		return
	}
	if s.errQuiet > 0 {
		args = append(args, "suppressed", s.errQuiet)
	}
	s.errLogAt, s.errQuiet = now, 0
	s.log.Error(msg, args...)
}

func writeFileSync(path string, data []byte) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if e := f.Close(); err == nil {
		err = e
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		_ = os.Remove(tmp)
	}
	return err
}

func syncDir(path string) error {
	d, err := os.Open(path)
	if err != nil {
		return err
	}
	err = d.Sync()
	if e := d.Close(); err == nil {
		err = e
	}
	return err
}

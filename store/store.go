package store

import (
	"encoding/binary"
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
	formatLine = "agentbridge state 2\n"
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

// Recovery says what Open found: what it restored and what it could not.
type Recovery struct {
	Clean     bool  // the last run closed the directory cleanly
	Sessions  int   // sessions restored
	Events    int   // events restored (within the retention bounds)
	Segments  int   // segment files read
	Corrupt   int   // corrupt or torn records found (the rest of their segment is lost)
	LostBytes int64 // bytes of those segments past the corruption
	// PrevDropped is how many records the last run dropped (its queue was
	// full) or failed to write, as it recorded when it closed cleanly.
	PrevDropped uint64
}

// Stats are the store's counters.
type Stats struct {
	Appended    uint64 // records accepted into the queue
	Dropped     uint64 // records refused: queue full or store closed
	Written     uint64 // records handed to write(2)
	WriteErrors uint64 // failed writes (their records are lost)
	Syncs       uint64 // fsyncs of segment files
	Compactions uint64 // segments rewritten and deleted
	Queued      int    // records waiting for the writer now
	Sessions    int    // sessions known on disk (as of the last batch)
	Segments    int    // segment files on disk
}

// Store persists session events under one directory.
type Store struct {
	dir  string
	opt  Options
	log  *slog.Logger
	lock *os.File
	rec  Recovery

	mu        sync.Mutex // guards the fields up to wake
	queue     []rec
	spare     []rec
	qbytes    int
	closed    bool
	droppedHi map[string]uint64 // highest seq dropped per session
	pushed    uint64            // records accepted into the queue, ever
	done      uint64            // ... of which the writer has written (or given up on)
	stopped   bool              // the writer has finished: nothing more is written
	doneCond  sync.Cond         // on mu: done or stopped changed (ReadLog waits on it)

	wake     chan struct{}
	finished chan struct{}
	closeErr error

	// imu guards the index (sess, segs and what they point to) between
	// the writer, which changes it, and ranged readers (ReadLog). The
	// writer holds it for a whole batch; it never waits for a reader.
	imu sync.Mutex

	appended, dropped, nwritten, writeErrors, syncs, compactions atomic.Uint64
	nsessions, nsegments                                         atomic.Int64

	// Owned by the writer goroutine (and by Open before it starts it);
	// changed under imu once it runs.
	sess     map[string]*sessState
	segs     []*segFile // ascending; the last is the active one
	active   *os.File
	buf      []byte     // records for the active segment, not yet written
	retired  []*os.File // rotated segments not yet fsynced
	dirty    bool       // active written since its last fsync
	dirDirty bool       // segment files created or deleted since the last dir fsync
	failed   bool       // a write failed: the next start must not trust "clean"
	// purgeAtOpen are segments holding records of deleted sessions, found
	// by recovery (a delete cut short by a crash).
	purgeAtOpen map[*segFile]bool
	errLogAt    time.Time
	errQuiet    int
}

type rec struct {
	kind    byte
	session string
	seq     uint64
	body    []byte
}

// segFile is one shared segment file's bookkeeping.
type segFile struct {
	id   uint64
	path string
	size int64 // bytes on disk (and in buf, for the active one)
	live int64 // bytes of records still needed (creates, marks, kept events)
}

// run is a stretch of one session's events with consecutive seqs (a hole
// starts a new run) that sit in the same segment, at most runEvents of
// them: runs are also the index of ranged reads (ReadLog), which start
// scanning a segment at the run's first record.
type run struct {
	seg   *segFile
	first uint64
	last  uint64
	count int
	bytes int   // body bytes +1 each, as the hub counts
	disk  int64 // framed bytes on disk
	off   int64 // file offset of the first event's record in seg
}

// runEvents bounds a run, so a ranged read starting inside one scans at
// most this many of the session's records before the ones it wants.
const runEvents = 512

// sessState is a session's on-disk state. Owned by the writer goroutine.
type sessState struct {
	id         string
	created    int64
	createSeg  *segFile
	createDisk int64
	markSeg    *segFile
	markDisk   int64
	runs       []run
	count      int
	bytes      int
	lastSeq    uint64 // highest seq on disk (events or marks)
	hi         uint64 // seq the session must resume after (restored or dropped)
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
		finished:  make(chan struct{}),
		sess:      make(map[string]*sessState),
	}
	s.doneCond.L = &s.mu
	fail := func(err error) (*Store, []Session, error) {
		lock.Close()
		return nil, nil, err
	}
	cleanPath := filepath.Join(dir, "clean")
	cb, err := os.ReadFile(cleanPath)
	clean := err == nil
	if clean {
		var c cleanFile
		if json.Unmarshal(cb, &c) == nil {
			s.rec.PrevDropped = c.Dropped
		}
		// From now on a crash must look unclean.
		if err := os.Remove(cleanPath); err != nil {
			return fail(fmt.Errorf("state dir: %w", err))
		}
		if err := syncDir(dir); err != nil {
			return fail(fmt.Errorf("state dir: %w", err))
		}
	}
	s.rec.Clean = clean
	sessions, err := s.recover(clean)
	if err != nil {
		return fail(err)
	}
	if err := s.rotate(); err != nil {
		return fail(fmt.Errorf("state dir: %w", err))
	}
	if len(s.purgeAtOpen) > 0 {
		s.purge(s.purgeAtOpen) // a delete cut short by a crash
		s.purgeAtOpen = nil
	}
	s.syncAll()
	s.nsessions.Store(int64(len(s.sess)))
	s.nsegments.Store(int64(len(s.segs)))
	go s.run()
	return s, sessions, nil
}

// Recovery reports what Open restored and what it could not. Safe from
// any goroutine.
func (s *Store) Recovery() Recovery { return s.rec }

type cleanFile struct {
	Dropped uint64 `json:"dropped"`
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
			hint := ""
			if strings.TrimSpace(string(b)) == "agentbridge state 1" {
				hint = " (the layout with a directory per session, before December 2026: it is not converted; move it away to start afresh)"
			}
			return fmt.Errorf("%w: %s holds FORMAT %q, want %q%s", ErrFormat, dir, strings.TrimSpace(string(b)), strings.TrimSpace(formatLine), hint)
		}
	case errors.Is(err, fs.ErrNotExist):
		ents, err := os.ReadDir(dir)
		if err != nil {
			return fmt.Errorf("state dir: %w", err)
		}
		for _, e := range ents {
			switch e.Name() {
			case "lock", "log", "clean":
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
	if err := os.MkdirAll(filepath.Join(dir, "log"), 0o700); err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	return syncDir(dir)
}

// Create records that a session exists (so it survives a restart even with
// no events). Safe from any goroutine; never blocks on I/O. Creates are
// never dropped: they are small, and losing one loses a whole session.
func (s *Store) Create(sessionID string) { s.push(rec{kind: kindCreate, session: sessionID}) }

// Append queues one event for writing. body must not be modified
// afterwards (it is written later, without a copy). Safe from any
// goroutine; never blocks on I/O: when the queue is full the record is
// dropped and counted.
func (s *Store) Append(sessionID string, seq uint64, body []byte) {
	s.push(rec{kind: kindEvent, session: sessionID, seq: seq, body: body})
}

func (s *Store) push(r rec) {
	if len(r.session) > maxID {
		s.dropped.Add(1)
		return
	}
	s.mu.Lock()
	if s.closed || (r.kind == kindEvent && (len(s.queue) >= s.opt.QueueRecords || s.qbytes+len(r.body) > s.opt.QueueBytes)) {
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
	s.pushed++
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
		Appended: s.appended.Load(), Dropped: s.dropped.Load(), Written: s.nwritten.Load(),
		WriteErrors: s.writeErrors.Load(), Syncs: s.syncs.Load(), Compactions: s.compactions.Load(),
		Queued: q, Sessions: int(s.nsessions.Load()), Segments: int(s.nsegments.Load()),
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
	<-s.finished
	return s.closeErr
}

func segName(id uint64) string { return fmt.Sprintf("%020d%s", id, segSuffix) }

// recovered is one session's state while segments are read.
type recEvent struct {
	seq  uint64
	body []byte
	seg  *segFile
	disk int64
	off  int64 // file offset of the record in seg
}

type recSession struct {
	st     *sessState
	events []recEvent
}

// recover reads every segment in order and rebuilds the sessions and the
// live-byte accounting. Corruption is logged and contained; I/O errors
// fail Open.
func (s *Store) recover(clean bool) ([]Session, error) {
	root := filepath.Join(s.dir, "log")
	ents, err := os.ReadDir(root)
	if err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}
	var ids []uint64
	for _, e := range ents {
		name, ok := strings.CutSuffix(e.Name(), segSuffix)
		if !ok || e.IsDir() {
			continue
		}
		id, err := strconv.ParseUint(name, 10, 64)
		if err != nil {
			continue
		}
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	work := map[string]*recSession{}
	purge := map[*segFile]bool{}
	get := func(id string) *recSession {
		rs := work[id]
		if rs == nil {
			rs = &recSession{st: &sessState{id: id}}
			work[id] = rs
		}
		return rs
	}
	for i, id := range ids {
		path := filepath.Join(root, segName(id))
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("state dir: %w", err)
		}
		s.rec.Segments++
		if len(data) < len(segMagic) || string(data[:len(segMagic)]) != segMagic {
			if len(data) < len(segMagic) && segMagic[:len(data)] == string(data) {
				// Created but cut before its magic was complete.
				if err := os.Remove(path); err != nil {
					return nil, fmt.Errorf("state dir: %w", err)
				}
				continue
			}
			s.rec.Corrupt++
			s.rec.LostBytes += int64(len(data))
			s.log.Warn("state dir: segment without its magic; renamed to .corrupt and ignored", "file", path)
			if err := os.Rename(path, path+".corrupt"); err != nil {
				return nil, fmt.Errorf("state dir: %w", err)
			}
			continue
		}
		seg := &segFile{id: id, path: path, size: int64(len(segMagic))}
		s.segs = append(s.segs, seg)
		good, perr := parseRecords(data[len(segMagic):], func(r record) {
			if r.kind == kindDelete {
				// Everything of the session before the tombstone is gone;
				// segments still holding it are rewritten once open.
				if rs := work[r.id]; rs != nil {
					for _, e := range rs.events {
						purge[e.seg] = true
					}
					if rs.st.createSeg != nil {
						purge[rs.st.createSeg] = true
					}
					if rs.st.markSeg != nil {
						purge[rs.st.markSeg] = true
					}
					delete(work, r.id)
				}
				return
			}
			rs := get(r.id)
			disk := int64(len(r.raw))
			switch r.kind {
			case kindCreate:
				if rs.st.createSeg == nil {
					rs.st.createSeg, rs.st.createDisk = seg, disk
					if len(r.body) == 8 {
						rs.st.created = int64(binary.LittleEndian.Uint64(r.body))
					}
				}
			case kindMark:
				if r.seq >= rs.st.hi {
					rs.st.hi, rs.st.markSeg, rs.st.markDisk = r.seq, seg, disk
				}
			case kindEvent:
				if r.seq > 0 {
					rs.events = append(rs.events, recEvent{seq: r.seq, body: r.body, seg: seg, disk: disk, off: int64(len(segMagic) + r.off)})
				}
			}
		})
		seg.size += int64(good)
		if perr != nil {
			lost := int64(len(data)-len(segMagic)) - int64(good)
			s.rec.Corrupt++
			s.rec.LostBytes += lost
			if i == len(ids)-1 {
				s.log.Warn("state dir: truncating a torn or corrupt tail (a write cut by a crash)", "file", path, "err", perr, "lost_bytes", lost)
				if err := os.Truncate(path, seg.size); err != nil {
					return nil, fmt.Errorf("state dir: %w", err)
				}
			} else {
				s.log.Warn("state dir: corrupt record; the rest of this segment is ignored", "file", path, "err", perr, "lost_bytes", lost)
			}
		}
	}
	skip := uint64(0)
	if !clean {
		skip = s.opt.LossBound()
	}
	out := make([]Session, 0, len(work))
	for id, rs := range work {
		st := rs.st
		if st.createSeg == nil && len(rs.events) == 0 {
			continue // only a mark survived: nothing to show
		}
		evs := rs.events
		sort.SliceStable(evs, func(i, j int) bool { return evs[i].seq < evs[j].seq })
		// Compaction copies records forward; a copy and its original may
		// both be on disk until the original's segment is deleted.
		k := 0
		for i := range evs {
			if k > 0 && evs[k-1].seq == evs[i].seq {
				continue
			}
			evs[k] = evs[i]
			k++
		}
		evs = evs[:k]
		// Keep what the hub would: the last MaxEvents events, MaxBytes bytes.
		from, bytes := len(evs), 0
		for from > 0 && len(evs)-from < s.opt.MaxEvents && bytes+len(evs[from-1].body)+1 <= s.opt.MaxBytes {
			from--
			bytes += len(evs[from].body) + 1
		}
		evs = evs[from:]
		events := make([]Event, len(evs))
		for i, e := range evs {
			events[i] = Event{Seq: e.seq, Body: e.body}
			st.addEvent(e.seq, len(e.body), e.disk, e.seg, e.off)
		}
		if st.createSeg != nil {
			st.createSeg.live += st.createDisk
		}
		if st.markSeg != nil {
			st.markSeg.live += st.markDisk
		}
		st.lastSeq = max(st.lastSeq, st.hi)
		st.hi = st.lastSeq + skip
		s.sess[id] = st
		s.rec.Events += len(events)
		out = append(out, Session{ID: id, Created: time.Unix(0, st.created).UTC(), Seq: st.hi, Events: events})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	s.rec.Sessions = len(out)
	s.purgeAtOpen = purge
	if !clean && len(out) > 0 {
		s.log.Warn("state dir was not closed cleanly; recovered sessions resume their seq past what may have been lost", "dir", s.dir, "sessions", len(out), "skip", skip)
	}
	return out, nil
}

// addEvent accounts one event of st whose record sits in seg at off.
// Seqs arrive ascending.
func (st *sessState) addEvent(seq uint64, body int, disk int64, seg *segFile, off int64) {
	if n := len(st.runs); n > 0 && st.runs[n-1].seg == seg && st.runs[n-1].last+1 == seq && st.runs[n-1].count < runEvents {
		r := &st.runs[n-1]
		r.last = seq
		r.count++
		r.bytes += body + 1
		r.disk += disk
	} else {
		st.runs = append(st.runs, run{seg: seg, first: seq, last: seq, count: 1, bytes: body + 1, disk: disk, off: off})
	}
	st.count++
	st.bytes += body + 1
	st.lastSeq = max(st.lastSeq, seq)
	seg.live += disk
}

// run is the writer goroutine.
func (s *Store) run() {
	defer close(s.finished)
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
			batch, closed, upto := s.take()
			if len(batch) > 0 {
				s.imu.Lock()
				s.writeBatch(batch)
				s.imu.Unlock()
				s.written(upto)
				if s.opt.SyncInterval < 0 {
					s.syncAll()
				}
				s.recycle(batch)
				continue
			}
			if closed {
				s.imu.Lock()
				s.closeErr = s.finish()
				s.imu.Unlock()
				s.mu.Lock()
				s.stopped = true
				s.doneCond.Broadcast()
				s.mu.Unlock()
				return
			}
			break
		}
	}
}

// take hands the queue to the writer, with the count of records pushed so
// far (all of them are in it or written).
func (s *Store) take() ([]rec, bool, uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.queue
	s.queue, s.spare = s.spare[:0], nil
	s.qbytes = 0
	return b, s.closed, s.pushed
}

// written records that the records pushed up to upto are on disk (in the
// page cache) and wakes the ranged readers waiting for them.
func (s *Store) written(upto uint64) {
	s.mu.Lock()
	s.done = upto
	s.doneCond.Broadcast()
	s.mu.Unlock()
}

func (s *Store) recycle(b []rec) {
	clear(b) // drop the bodies now
	if cap(b) > 1<<16 {
		return // a burst's backing array is not kept
	}
	s.mu.Lock()
	if s.spare == nil {
		s.spare = b[:0]
	}
	s.mu.Unlock()
}

func (s *Store) writeBatch(b []rec) {
	var events uint64 // counted once they are handed to write(2), not when buffered
	for i := range b {
		r := &b[i]
		if r.kind == kindDelete {
			s.forget(r.session)
			continue
		}
		st := s.session(r.session)
		if r.kind == kindEvent && r.seq > st.lastSeq {
			seg, off := s.put(kindEvent, st.id, r.seq, r.body)
			events++
			st.addEvent(r.seq, len(r.body), recordSize(st.id, r.body), seg, off)
			s.trim(st)
		}
	}
	s.flush()
	s.nwritten.Add(events)
	s.compact()
	s.nsessions.Store(int64(len(s.sess)))
	s.nsegments.Store(int64(len(s.segs)))
}

// cur is the active segment.
func (s *Store) cur() *segFile { return s.segs[len(s.segs)-1] }

// session returns a session's state, writing its create record first.
func (s *Store) session(id string) *sessState {
	if st := s.sess[id]; st != nil {
		return st
	}
	st := &sessState{id: id, created: time.Now().UnixNano()}
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], uint64(st.created))
	s.put(kindCreate, id, 0, b[:])
	st.createSeg, st.createDisk = s.cur(), recordSize(id, b[:])
	st.createSeg.live += st.createDisk
	s.sess[id] = st
	return st
}

// put buffers one record for the active segment, rotating first when it
// is full, and says where it lands.
func (s *Store) put(kind byte, id string, seq uint64, body []byte) (*segFile, int64) {
	seg := s.cur()
	if seg.size > int64(len(segMagic)) && seg.size+recordSize(id, body) > int64(s.opt.SegmentBytes) {
		s.flush()
		if err := s.rotate(); err != nil {
			s.writeErrors.Add(1)
			s.failed = true
			s.logErr("state dir: cannot start a new segment; writing on in the old one", "err", err)
		}
		seg = s.cur()
	}
	s.buf = appendRecord(s.buf, kind, id, seq, body)
	off := seg.size
	seg.size += recordSize(id, body)
	return seg, off
}

// flush writes the buffered records with one write(2).
func (s *Store) flush() {
	if len(s.buf) == 0 {
		return
	}
	n, err := s.active.Write(s.buf)
	if err != nil {
		s.writeErrors.Add(1)
		s.failed = true
		s.logErr("state dir: write failed; these events are not persisted", "file", s.active.Name(), "bytes", len(s.buf), "err", err)
		if n > 0 {
			// Leave no torn record: the next recovery would stop there.
			if fi, e := s.active.Stat(); e == nil {
				_ = s.active.Truncate(fi.Size() - int64(n))
			}
		}
	}
	s.dirty = true
	if cap(s.buf) > 4<<20 {
		s.buf = nil
	} else {
		s.buf = s.buf[:0]
	}
}

// rotate starts a new active segment. Precondition: buf flushed.
func (s *Store) rotate() error {
	next := uint64(1)
	if len(s.segs) > 0 {
		next = s.segs[len(s.segs)-1].id + 1
	}
	path := filepath.Join(s.dir, "log", segName(next))
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(segMagic); err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	if s.active != nil {
		if s.dirty {
			s.retired = append(s.retired, s.active)
		} else {
			s.active.Close()
		}
	}
	s.active, s.dirty, s.dirDirty = f, true, true
	s.segs = append(s.segs, &segFile{id: next, path: path, size: int64(len(segMagic))})
	return nil
}

// trim forgets a session's oldest runs while the newer ones alone hold
// MaxEvents events or MaxBytes bytes: their bytes are dead, for compaction.
func (s *Store) trim(st *sessState) {
	for len(st.runs) > 1 {
		old := st.runs[0]
		if st.count-old.count < s.opt.MaxEvents && st.bytes-old.bytes < s.opt.MaxBytes {
			return
		}
		st.count -= old.count
		st.bytes -= old.bytes
		old.seg.live -= old.disk
		st.runs = st.runs[1:]
	}
}

// compact deletes every old segment with no live record, and rewrites at
// most one more per batch when the segments hold more than twice the live
// bytes (and a segment's worth more): its live records are copied into
// the active segment, fsynced, and the old file deleted.
func (s *Store) compact() {
	for rewrote := false; ; {
		again, rewrite := s.compactOne(!rewrote)
		if !again {
			return
		}
		rewrote = rewrote || rewrite
	}
}

// compactOne deletes or (when allowed) rewrites the old segment with the
// fewest live bytes per byte; it reports whether it did, and whether that
// was a rewrite.
func (s *Store) compactOne(mayRewrite bool) (bool, bool) {
	if len(s.segs) < 2 {
		return false, false
	}
	var total, live int64
	var victim *segFile
	for _, seg := range s.segs[:len(s.segs)-1] {
		total += seg.size
		live += seg.live
		if victim == nil || seg.live*victim.size < victim.live*seg.size {
			victim = seg
		}
	}
	if victim.live > 0 && (!mayRewrite || total <= 2*live+int64(s.opt.SegmentBytes)) {
		return false, false
	}
	rewrite := victim.live > 0
	if !s.rewriteSeg(victim) {
		return false, false
	}
	return true, rewrite
}

// rewriteSeg copies the live records of an old segment into the active
// one, fsyncs them, and deletes the segment. It reports success.
func (s *Store) rewriteSeg(victim *segFile) bool {
	if victim.live > 0 {
		data, err := os.ReadFile(victim.path)
		if err != nil || len(data) < len(segMagic) {
			s.logErr("state dir: cannot read a segment to compact it", "file", victim.path, "err", err)
			return false
		}
		dst := s.cur()
		moved := map[*sessState]bool{}
		_, _ = parseRecords(data[len(segMagic):], func(r record) {
			st := s.sess[r.id]
			if st == nil {
				return // deleted: its records are dead
			}
			keep := false
			switch r.kind {
			case kindCreate:
				keep = st.createSeg == victim
			case kindMark:
				keep = st.markSeg == victim && r.seq == st.hi
			case kindEvent:
				// The run covering seq is the last one starting at or
				// before it; older events than the first run are dead.
				i := sort.Search(len(st.runs), func(i int) bool { return st.runs[i].first > r.seq }) - 1
				keep = i >= 0 && st.runs[i].seg == victim && r.seq <= st.runs[i].last
				if keep && r.seq == st.runs[i].first {
					st.runs[i].off = dst.size // where the run starts now
				}
			}
			if keep {
				// Copied byte for byte, without rotating: the moved runs
				// must all land in dst.
				s.buf = append(s.buf, r.raw...)
				dst.size += int64(len(r.raw))
				moved[st] = true
			}
		})
		for st := range moved {
			if st.createSeg == victim {
				st.createSeg = dst
				dst.live += st.createDisk
			}
			if st.markSeg == victim {
				st.markSeg = dst
				dst.live += st.markDisk
			}
			for i := range st.runs {
				if st.runs[i].seg == victim {
					st.runs[i].seg = dst
					dst.live += st.runs[i].disk
				}
			}
		}
		s.flush()
		// The copies must be durable before the originals go.
		if err := s.active.Sync(); err != nil {
			s.writeErrors.Add(1)
			s.failed = true
			s.logErr("state dir: fsync failed; compaction postponed", "err", err)
			return false
		}
		s.syncs.Add(1)
		s.dirty = false
	}
	if err := os.Remove(victim.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		s.logErr("state dir: cannot delete a compacted segment", "file", victim.path, "err", err)
		return false
	}
	for i, seg := range s.segs {
		if seg == victim {
			s.segs = append(s.segs[:i], s.segs[i+1:]...)
			break
		}
	}
	s.dirDirty = true
	s.compactions.Add(1)
	return true
}

// Delete forgets a session (session/delete): a tombstone is written, and
// every segment holding its records is rewritten without them before the
// call's batch ends, so a restart never brings it back. Safe from any
// goroutine; never blocks on I/O; never dropped.
func (s *Store) Delete(sessionID string) { s.push(rec{kind: kindDelete, session: sessionID}) }

// forget drops a session's state and rewrites the segments that hold its
// records. Writer goroutine only.
func (s *Store) forget(id string) {
	st := s.sess[id]
	if st == nil {
		return
	}
	segs := map[*segFile]bool{}
	for _, r := range st.runs {
		r.seg.live -= r.disk
		segs[r.seg] = true
	}
	if st.createSeg != nil {
		st.createSeg.live -= st.createDisk
		segs[st.createSeg] = true
	}
	if st.markSeg != nil {
		st.markSeg.live -= st.markDisk
		segs[st.markSeg] = true
	}
	delete(s.sess, id)
	// The tombstone covers a crash before the rewrites are done.
	s.put(kindDelete, id, 0, nil)
	s.purge(segs)
}

// purge rewrites the given segments (the active one after rotating it).
func (s *Store) purge(segs map[*segFile]bool) {
	s.flush()
	if segs[s.cur()] {
		if err := s.rotate(); err != nil {
			s.writeErrors.Add(1)
			s.failed = true
			s.logErr("state dir: cannot start a new segment; a deleted session's records stay until the next compaction", "err", err)
			return
		}
	}
	for _, seg := range append([]*segFile(nil), s.segs[:len(s.segs)-1]...) {
		if segs[seg] {
			s.rewriteSeg(seg)
		}
	}
}

// syncAll fsyncs the active segment, the rotated ones and the directory.
func (s *Store) syncAll() {
	if s.dirty && s.active != nil {
		if err := s.active.Sync(); err != nil {
			s.writeErrors.Add(1)
			s.failed = true
			s.logErr("state dir: fsync failed", "file", s.active.Name(), "err", err)
		}
		s.syncs.Add(1)
		s.dirty = false
	}
	for _, f := range s.retired {
		if err := f.Sync(); err != nil {
			s.writeErrors.Add(1)
			s.failed = true
			s.logErr("state dir: fsync failed", "file", f.Name(), "err", err)
		}
		s.syncs.Add(1)
		f.Close()
	}
	clear(s.retired)
	s.retired = s.retired[:0]
	if s.dirDirty {
		if err := syncDir(filepath.Join(s.dir, "log")); err != nil {
			s.logErr("state dir: fsync of the directory failed", "err", err)
		}
		s.dirDirty = false
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
		if st := s.sess[id]; st != nil && st.hi < seq {
			st.hi = seq
		}
	}
	for _, st := range s.sess {
		if st.hi > st.lastSeq {
			s.put(kindMark, st.id, st.hi, nil)
			st.lastSeq = st.hi
		}
	}
	s.flush()
	s.syncAll()
	var err error
	if s.active != nil {
		err = s.active.Close()
	}
	if n := s.writeErrors.Load(); n > 0 {
		err = errors.Join(err, fmt.Errorf("state dir: %d write errors; some events were not persisted", n))
	}
	if !s.failed {
		cb, _ := json.Marshal(cleanFile{Dropped: s.dropped.Load()})
		if e := writeFileSync(filepath.Join(s.dir, "clean"), cb); e != nil {
			err = errors.Join(err, fmt.Errorf("state dir: %w", e))
		} else if e := syncDir(s.dir); e != nil {
			err = errors.Join(err, fmt.Errorf("state dir: %w", e))
		}
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

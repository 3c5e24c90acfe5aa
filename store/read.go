package store

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
)

// ErrClosed means the store was closed: nothing more can be read.
var ErrClosed = errors.New("store: closed")

// readChunk is how much of a segment a ranged read takes with one pread.
const readChunk = 64 << 10

// ReadLog calls fn, in ascending seq order, for the persisted events of
// sessionID with after < seq <= upto: at most maxEvents of them, and no
// more once they hold maxBytes (at least one is read). body is borrowed
// for the call. It returns the highest seq it covered: upto when it went
// through the whole range (a seq in the range that fn was not called for
// is not on disk: never persisted, dropped, or past the retention), else
// the seq of the last event it passed to fn. With an error, the events up
// to the returned seq were read; the rest of the range was not.
//
// What was appended before the call is read: ReadLog first waits for the
// writer to have written it. It blocks on that and on disk I/O, so call it
// from a goroutine of its own, never under a lock the daemon's routing
// needs. Safe from any goroutine; reads run beside the writer (they share
// a mutex for the index, held by the writer for one write batch at most).
func (s *Store) ReadLog(sessionID string, after, upto uint64, maxEvents, maxBytes int, fn func(seq uint64, body []byte)) (uint64, error) {
	if upto <= after {
		return after, nil
	}
	if err := s.awaitWriter(); err != nil {
		return after, err
	}
	s.imu.Lock()
	defer s.imu.Unlock()
	st := s.sess[sessionID]
	if st == nil {
		return upto, nil
	}
	rd := rangeRead{s: s, id: sessionID, after: after, maxEvents: max(maxEvents, 1), maxBytes: maxBytes, fn: fn}
	defer rd.close()
	// The first run that holds anything past after.
	i := sort.Search(len(st.runs), func(i int) bool { return st.runs[i].last > after })
	for ; i < len(st.runs) && st.runs[i].first <= upto; i++ {
		r := &st.runs[i]
		want := min(r.last, upto)
		if err := rd.scan(r, want); err != nil {
			return rd.last, fmt.Errorf("state dir: reading session %q at seq %d: %w", sessionID, rd.last+1, err)
		}
		if rd.last < want {
			return rd.last, nil // maxEvents or maxBytes reached
		}
	}
	return upto, nil
}

// awaitWriter waits until what was queued before the call is written.
func (s *Store) awaitWriter() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	want := s.pushed
	for s.done < want && !s.stopped {
		s.doneCond.Wait()
	}
	if s.stopped {
		return ErrClosed
	}
	return nil
}

// rangeRead is one ReadLog call's state. Under imu.
type rangeRead struct {
	s         *Store
	id        string
	after     uint64 // events at or below are skipped
	last      uint64 // the last seq passed to fn (after, before any)
	n, bytes  int
	maxEvents int
	maxBytes  int
	fn        func(seq uint64, body []byte)

	f    *os.File // the segment being read
	fseg *segFile
	buf  []byte
}

func (rd *rangeRead) close() {
	if rd.f != nil {
		rd.f.Close()
	}
}

// full reports whether the read has what it may return.
func (rd *rangeRead) full() bool {
	return rd.n >= rd.maxEvents || (rd.n > 0 && rd.bytes >= rd.maxBytes)
}

// scan reads run r's events from its first record on, passing those past
// rd.last up to want to fn, until it passes want or rd is full. Records of
// other sessions, and of this one outside r (copies compaction left
// behind, other runs moved into the same segment), are skipped.
func (rd *rangeRead) scan(r *run, want uint64) error {
	if rd.last < rd.after {
		rd.last = rd.after
	}
	if rd.fseg != r.seg {
		if rd.f != nil {
			rd.f.Close()
		}
		f, err := os.Open(r.seg.path)
		if err != nil {
			rd.f, rd.fseg = nil, nil
			return err
		}
		rd.f, rd.fseg = f, r.seg
	}
	if rd.buf == nil {
		rd.buf = make([]byte, readChunk)
	}
	pos, end := r.off, r.seg.size
	for pos < end && rd.last < want && !rd.full() {
		req := int(min(int64(len(rd.buf)), end-pos))
		n, err := rd.f.ReadAt(rd.buf[:req], pos)
		if n < req {
			if err == nil || err == io.EOF {
				err = io.ErrUnexpectedEOF // the file is shorter than the index
			}
			return err
		}
		data := rd.buf[:n]
		used, grow := 0, 0
		for used < len(data) && rd.last < want && !rd.full() {
			kind, id, seq, body, size, err := decodeRecord(data[used:])
			if err == errShort {
				if size > len(rd.buf) {
					grow = size // one record larger than a chunk
				}
				break
			}
			if err != nil {
				return err
			}
			used += size
			if kind != kindEvent || string(id) != rd.id || seq < r.first || seq > want || seq <= rd.last {
				continue
			}
			rd.fn(seq, body)
			rd.last = seq
			rd.n++
			rd.bytes += len(body)
		}
		if used == 0 {
			if grow == 0 {
				return fmt.Errorf("%w: a record runs past the end of %s", ErrCorrupt, r.seg.path)
			}
			rd.buf = make([]byte, grow)
		}
		pos += int64(used)
	}
	if rd.last < want && !rd.full() {
		return fmt.Errorf("%w: events %d..%d are indexed in %s but not found", ErrCorrupt, rd.last+1, want, r.seg.path)
	}
	return nil
}

package store

import (
	"os"
	"path/filepath"
)

// kindDelete is a queue-only record: forget a session (ACP session/delete).
const kindDelete = 'D'

// Delete queues the removal of a session's files, so it is not recovered
// after a restart; events appended for it afterwards start it afresh. Safe
// from any goroutine; never blocks on I/O (when the queue is full the
// request is dropped and counted, like a record).
func (s *Store) Delete(sessionID string) { s.push(rec{kind: kindDelete, session: sessionID}) }

// forget removes a session's directory and bookkeeping: what it had not
// written yet is discarded. Owned by the writer goroutine.
func (s *Store) forget(id string) {
	dir := filepath.Join(s.dir, "sessions", hashName(id))
	if sf := s.sess[id]; sf != nil {
		sf.buf, sf.pendCount, sf.pendBytes = nil, 0, 0
		s.closeFile(sf)
		if sf.touched {
			sf.touched = false
			for i, t := range s.touched {
				if t == sf {
					s.touched = append(s.touched[:i], s.touched[i+1:]...)
					break
				}
			}
		}
		delete(s.sess, id)
	}
	delete(s.dirtyDirs, dir)
	if err := os.RemoveAll(dir); err != nil {
		s.writeErrors.Add(1)
		s.logErr("state dir: cannot delete a deleted session's directory; it will be recovered", "session", id, "err", err)
		return
	}
	s.dirtyDirs[filepath.Join(s.dir, "sessions")] = true
}

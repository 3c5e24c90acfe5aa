// Package store owns agentbridge's on-disk state: each session's event log
// (seq and message body) and its identity, so that a restarted daemon still
// shows the history of every session.
//
// # Layout
//
//	DIR/FORMAT                      "agentbridge state 1"
//	DIR/lock                        flock(2): one daemon per directory
//	DIR/clean                       present only after a clean Close
//	DIR/sessions/<hash>/meta        {"sessionId": ..., "created": ...}
//	DIR/sessions/<hash>/<seq>.seg   append-only segments, named by the
//	                                first seq they hold (20 digits)
//
// <hash> is the hex SHA-256 prefix of the session id (ids are chosen by the
// agent and may hold any character); meta names the session.
//
// A segment starts with an 8-byte magic and holds records:
//
//	crc32c  uint32 LE   over everything after it (length, kind, seq, body)
//	length  uint32 LE   of body
//	kind    byte        'E' event, 'H' high-water mark (seq only)
//	seq     uint64 LE
//	body    [length]byte
//
// Recovery reads every record it can: a torn or corrupt record at the end
// of a session's last segment (a write cut by a crash) is truncated away; a
// corrupt record inside an older segment ends that segment (the events
// after it in that file are lost, later segments still count). Seqs only
// grow; a missing range is a hole the hub reports as bridge/gap.
//
// # Bounds
//
// Per session the store keeps whole segments covering the last MaxEvents
// events and MaxBytes bytes (the hub's replay bounds): a segment is deleted
// once the newer ones alone hold that much, so a session costs at most the
// bound plus one segment (a quarter of it) on disk.
//
// # Durability
//
// Append only queues (the hub calls it under its lock); one writer
// goroutine writes queued records with one write(2) per session per batch,
// promptly, and fsyncs the files it wrote every SyncInterval. So:
//
//   - kill -9 of the daemon loses only records still queued in memory (not
//     yet handed to write(2)): normally under a millisecond of events, at
//     most QueueRecords.
//   - a kernel crash or power loss also loses what was written but not yet
//     fsynced: at most SyncInterval of events.
//   - a record that does not fit the queue (the disk is slower than the
//     agent) is dropped and counted; it becomes a hole in the persisted log.
//
// Because the hub may have delivered events the crash then lost, a session
// recovered after an unclean stop resumes its seq LossBound past the last
// record on disk: no seq a client may have seen is ever reused.
//
// # Concurrency
//
// Append and Create are safe from any goroutine and never block on I/O.
// Everything on disk is written only by the writer goroutine (and by Open,
// before it starts). ReadLog (a session's events by seq range, for
// catch-up past the hub's memory log) is safe from any goroutine and
// blocks: it waits for the writer to have written what was queued before
// it, then reads the segments under the index mutex, which the writer
// holds for one batch at a time. Each session is indexed by runs of
// consecutive seqs in one segment (at most 512 events) with the offset of
// their first record, so a read scans from the run holding its cursor.
package store

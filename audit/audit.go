// Package audit owns the control-plane audit log (`--audit FILE`): one JSON
// object per line for every decision a post-mortem needs (permission
// answers, cancels, role denials, auth failures, timeouts), appended to a
// file only the daemon's user may read.
//
// Record never blocks: records go through a bounded channel to one writer
// goroutine, which encodes and appends them (O_APPEND, so concurrent
// writers and log shippers that truncate see whole lines). When the channel
// is full the record is dropped and counted; the count is itself written
// to the log as soon as there is room, so a gap in the log is never silent.
// Close drains the channel, flushes and fsyncs.
//
// Records never hold tokens: the hub only knows roles, and callers of
// AuditAuthFailure-style hooks pass reasons, not credentials.
package audit

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// Record is one control-plane decision.
type Record struct {
	Time       time.Time `json:"time"`
	Connection uint64    `json:"connection"`          // 0: the agent or the bridge itself
	Role       string    `json:"role"`                // viewer, operator, client; "agent" or "bridge" for their own decisions
	Peer       string    `json:"peer,omitempty"`      // remote address or uid/pid
	Transport  string    `json:"transport,omitempty"` // unix, ws, wss, sse
	Session    string    `json:"session,omitempty"`
	Method     string    `json:"method"`
	Outcome    string    `json:"outcome"`             // answered, denied, forwarded, cancelled, timed-out, ...
	RequestID  int64     `json:"requestId,omitempty"` // the agent request's id as clients saw it
	ToolCall   string    `json:"toolCall,omitempty"`  // what a permission request was about
	Option     string    `json:"option,omitempty"`    // the permission outcome chosen
	Detail     string    `json:"detail,omitempty"`
}

// Options configure a Log. Every field's zero value is usable.
type Options struct {
	// Queue is how many records may wait for the writer. Zero means 4096.
	Queue int
}

// Log is an open audit log.
type Log struct {
	f       *os.File
	mu      sync.RWMutex // Record holds it shared; Close exclusively
	closed  bool
	ch      chan Record
	done    chan struct{}
	dropped atomic.Uint64
	written atomic.Uint64
	err     error // the writer's first error; read after done
}

// Open opens (creating) path for appending with mode 0600, tightening the
// mode of an existing file, and starts the writer. Call from one goroutine.
func Open(path string, o Options) (*Log, error) {
	if o.Queue <= 0 {
		o.Queue = 4096
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("audit log: %w", err)
	}
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return nil, fmt.Errorf("audit log: %w", err)
	}
	l := &Log{f: f, ch: make(chan Record, o.Queue), done: make(chan struct{})}
	go l.run()
	return l, nil
}

// Record queues r; it never blocks. Safe from any goroutine, including
// under the hub's lock.
func (l *Log) Record(r Record) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.closed {
		l.dropped.Add(1)
		return
	}
	select {
	case l.ch <- r:
	default:
		l.dropped.Add(1)
	}
}

// Dropped is how many records were dropped (queue full or closed). Safe
// from any goroutine.
func (l *Log) Dropped() uint64 { return l.dropped.Load() }

// Written is how many records reached the file. Safe from any goroutine.
func (l *Log) Written() uint64 { return l.written.Load() }

// Close writes what is queued, fsyncs and closes the file. Safe from any
// goroutine; later Records are dropped.
func (l *Log) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return ErrClosed
	}
	l.closed = true
	close(l.ch)
	l.mu.Unlock()
	<-l.done
	err := l.err
	if e := l.f.Sync(); err == nil {
		err = e
	}
	if e := l.f.Close(); err == nil {
		err = e
	}
	if err != nil {
		return fmt.Errorf("audit log: %w", err)
	}
	return nil
}

// run is the writer goroutine: it encodes records into a buffer and
// writes it whenever the channel is momentarily empty, so lines reach the
// file promptly and bursts cost one write(2).
func (l *Log) run() {
	defer close(l.done)
	w := bufio.NewWriterSize(l.f, 64<<10)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	reported := uint64(0)
	put := func(r Record) {
		if err := enc.Encode(r); err != nil && l.err == nil {
			l.err = err
		}
		l.written.Add(1)
	}
	for r := range l.ch {
		if d := l.dropped.Load(); d > reported {
			put(Record{Time: time.Now().UTC(), Role: "bridge", Method: "audit", Outcome: "dropped",
				Detail: fmt.Sprintf("%d audit records dropped: the audit queue was full or the log was closing", d-reported)})
			reported = d
		}
		put(r)
		if len(l.ch) == 0 {
			if err := w.Flush(); err != nil && l.err == nil {
				l.err = err
			}
		}
	}
	if d := l.dropped.Load(); d > reported {
		put(Record{Time: time.Now().UTC(), Role: "bridge", Method: "audit", Outcome: "dropped",
			Detail: fmt.Sprintf("%d audit records dropped: the audit queue was full or the log was closing", d-reported)})
	}
	if err := w.Flush(); err != nil && l.err == nil {
		l.err = err
	}
}

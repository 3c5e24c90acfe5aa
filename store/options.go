package store

import (
	"io"
	"log/slog"
	"time"
)

// Options configure a Store. Every field's zero value is usable.
type Options struct {
	// MaxEvents is how many events per session the store must keep (the
	// hub's --replay). Zero means 10,000.
	MaxEvents int
	// MaxBytes is how many body bytes per session it must keep (the hub's
	// --replay-bytes). Zero means 64 MiB.
	MaxBytes int
	// SegmentBytes is the size at which the shared segment file is closed
	// and a new one started. Zero means 16 MiB.
	SegmentBytes int
	// SyncInterval is how often written records are fsynced. Zero means
	// one second; a negative value fsyncs after every write batch.
	SyncInterval time.Duration
	// QueueRecords bounds the records waiting for the writer; past it
	// Append drops (and counts) records. Zero means 16,384.
	QueueRecords int
	// QueueBytes bounds the body bytes waiting for the writer. Zero means
	// 64 MiB.
	QueueBytes int
	// Logger; nil discards.
	Logger *slog.Logger
}

func (o *Options) fill() {
	if o.MaxEvents <= 0 {
		o.MaxEvents = 10000
	}
	if o.MaxBytes <= 0 {
		o.MaxBytes = 64 << 20
	}
	if o.SegmentBytes <= 0 {
		o.SegmentBytes = 16 << 20
	}
	if o.SyncInterval == 0 {
		o.SyncInterval = time.Second
	}
	if o.QueueRecords <= 0 {
		o.QueueRecords = 16384
	}
	if o.QueueBytes <= 0 {
		o.QueueBytes = 64 << 20
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
}

// LossBound is how far past the last record on disk a session's seq
// resumes after an unclean stop: the most records of one session that can
// have been queued (QueueRecords) or in the writer's hands (one more
// queue's worth) when the process died.
func (o Options) LossBound() uint64 {
	o.fill()
	return 2 * uint64(o.QueueRecords)
}

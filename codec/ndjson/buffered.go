package ndjson

// Buffered reports how many bytes were read from the underlying reader but
// not yet returned as lines. A relay flushes its writer when it is zero, so
// a burst is written in one go and a lone message without delay.
func (r *Reader) Buffered() int { return r.end - r.start }

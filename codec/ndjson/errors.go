package ndjson

import "errors"

// ErrTooLarge reports a line longer than the configured maximum. The stream
// cannot be resynchronised after it, so the connection should be closed.
var ErrTooLarge = errors.New("ndjson: line too large")

package audit

import "errors"

// ErrClosed is returned by Close when called twice.
var ErrClosed = errors.New("audit: closed")

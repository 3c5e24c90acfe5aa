package lsp

import "errors"

// Framing errors. The stream cannot be resynchronised after either, so the
// connection should be closed. Errors carrying detail wrap these: test with
// errors.Is.
var (
	// ErrBadHeader: a missing, invalid or conflicting Content-Length, a
	// malformed header line, a line not ended by CRLF, or a header block
	// longer than 8 KiB.
	ErrBadHeader = errors.New("lsp: bad header")
	// ErrTooLarge: Content-Length exceeds the configured maximum.
	ErrTooLarge = errors.New("lsp: message too large")
)

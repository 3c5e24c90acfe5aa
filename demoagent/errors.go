package demoagent

import "errors"

var (
	// ErrCrashed is what Run returns when a "crash" prompt asked the process
	// to exit and the exit hook returned (only in tests; a real process has
	// exited with status 3 by then).
	ErrCrashed = errors.New("demoagent: crash requested by prompt")
	// errClosed is returned to goroutines that try to write after the writer
	// has stopped.
	errClosed = errors.New("demoagent: output closed")
)

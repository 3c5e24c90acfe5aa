package store

import "errors"

var (
	// ErrLocked means another process holds the state directory.
	ErrLocked = errors.New("store: state directory is in use by another process")
	// ErrFormat means the directory holds something other than this
	// version's state.
	ErrFormat = errors.New("store: not an agentbridge state directory of a known format")
	// ErrCorrupt marks a record that failed its checksum or framing.
	ErrCorrupt = errors.New("store: corrupt record")
)

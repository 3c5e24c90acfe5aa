package connect

import "errors"

// Sentinels, found with errors.Is in the chain of an *Error.
var (
	// ErrGaveUp: the connection was lost and reconnecting failed for the
	// whole of Options.RetryFor.
	ErrGaveUp = errors.New("connect: gave up reconnecting")
	// ErrDaemonClosed: the daemon ended the connection (EOF or a close frame).
	ErrDaemonClosed = errors.New("connect: the daemon closed the connection")
	// ErrHandshake: the daemon did not answer the shim's bridge/hello in time.
	ErrHandshake = errors.New("connect: no answer to bridge/hello")
	// ErrForeignServer: the Unix socket is served by a uid that is neither
	// the shim's nor allowed (--allow-uid).
	ErrForeignServer = errors.New("connect: the socket is served by another user")
)

// Error is a failure the user can act on; Run returns it with a message
// naming what went wrong. Err is the cause, for errors.Is and errors.As.
type Error struct {
	Msg string
	Err error
}

func (e *Error) Error() string { return e.Msg }
func (e *Error) Unwrap() error { return e.Err }

// refusal marks an error that retrying cannot fix (a rejected token, an
// untrusted certificate): the shim stops instead of reconnecting.
type refusal struct{ e *Error }

func (r *refusal) Error() string { return r.e.Error() }
func (r *refusal) Unwrap() error { return r.e }

func refused(e *Error) error { return &refusal{e} }

func isRefusal(err error) bool {
	var r *refusal
	return errors.As(err, &r)
}

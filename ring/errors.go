package ring

import "errors"

var (
	// ErrClosed is returned by Push after Close.
	ErrClosed = errors.New("ring: closed")
	// ErrControlOverflow is returned when a control item does not fit in the
	// remaining slots or control bytes. Nothing was queued; control is never
	// dropped silently, so the caller closes the connection.
	ErrControlOverflow = errors.New("ring: control overflow")
	// ErrFull is returned when a data item was dropped because no slot was
	// free. Unlike an eviction it leaves no tombstone; see Push.
	ErrFull = errors.New("ring: full")
	// ErrWouldEvict is returned by PushNoEvict when a data item would need
	// an eviction (or a free slot) to fit. Nothing was queued.
	ErrWouldEvict = errors.New("ring: would evict")
	// ErrLagging is returned by PushUnder when the consumer is behind: the
	// item was not queued, and the caller feeds it from elsewhere.
	ErrLagging = errors.New("ring: consumer lagging")
	// ErrBadConfig wraps every error from Config.Validate.
	ErrBadConfig = errors.New("ring: bad config")
)

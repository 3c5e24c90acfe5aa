// Package breaker owns the per-connection health decision: full delivery or
// degraded (summary-only) delivery. It is the only importer of
// github.com/sony/gobreaker/v2.
//
// The connection's event loop feeds it one observation per drain (healthy:
// the queue is under its low watermark and the drain met its deadline;
// unhealthy: the queue is over its high watermark or a deadline was
// missed), and each push that finds the queue at its ceiling adds an
// unhealthy one (delivery.Outbox). TripAfter consecutive unhealthy observations open the breaker
// and the connection is degraded. After OpenFor it half-opens: full
// delivery is tried again, ProbeSuccesses healthy observations in a row
// close it, a single unhealthy one re-opens it for another OpenFor.
//
// gobreaker v2.4.0 reads time.Now itself and has no clock hook, so the
// open period runs on the wall clock; tests use a short OpenFor and wait
// for the transition with a deadline.
package breaker

import (
	"errors"
	"fmt"
	"math"
	"sync/atomic"
	"time"

	"github.com/sony/gobreaker/v2"
)

// Config tunes a Breaker. Every zero value means the documented default.
type Config struct {
	// TripAfter is the number of consecutive unhealthy observations that
	// open the breaker. Zero means 3.
	TripAfter int
	// OpenFor is how long the breaker stays open before it half-opens to
	// probe full delivery. Zero means 1s.
	OpenFor time.Duration
	// ProbeSuccesses is the number of consecutive healthy observations in
	// half-open that close the breaker. Zero means 3.
	ProbeSuccesses uint32
}

const (
	defaultTripAfter      = 3
	defaultOpenFor        = time.Second
	defaultProbeSuccesses = 3
)

// WithDefaults returns c with every zero field replaced by its default.
func (c Config) WithDefaults() Config {
	if c.TripAfter == 0 {
		c.TripAfter = defaultTripAfter
	}
	if c.OpenFor == 0 {
		c.OpenFor = defaultOpenFor
	}
	if c.ProbeSuccesses == 0 {
		c.ProbeSuccesses = defaultProbeSuccesses
	}
	return c
}

// Validate reports the first bad field of c, naming the value.
func (c Config) Validate() error {
	c = c.WithDefaults()
	switch {
	case c.TripAfter < 1 || uint64(c.TripAfter) > math.MaxUint32:
		return fmt.Errorf("%w: TripAfter %d must be between 1 and %d", ErrBadConfig, c.TripAfter, uint64(math.MaxUint32))
	case c.OpenFor < 0:
		return fmt.Errorf("%w: OpenFor %v must not be negative", ErrBadConfig, c.OpenFor)
	}
	return nil
}

// State is the delivery state of a connection.
type State int

const (
	// Closed: the consumer is healthy; full delivery.
	Closed State = iota
	// Open: the consumer fell behind; degraded (summary-only) delivery.
	Open
	// HalfOpen: OpenFor has passed; full delivery is probed.
	HalfOpen
)

// String returns "closed", "open" or "half-open".
func (s State) String() string {
	switch s {
	case Closed:
		return "closed"
	case Open:
		return "open"
	case HalfOpen:
		return "half-open"
	default:
		return fmt.Sprintf("State(%d)", int(s))
	}
}

func fromGobreaker(s gobreaker.State) State {
	switch s {
	case gobreaker.StateOpen:
		return Open
	case gobreaker.StateHalfOpen:
		return HalfOpen
	default:
		return Closed
	}
}

// errUnhealthy is what an unhealthy observation reports to gobreaker; it
// never leaves the package.
var errUnhealthy = errors.New("breaker: consumer unhealthy")

// Breaker decides full versus degraded delivery for one connection. All
// methods are safe from any goroutine.
//
// It drives gobreaker's CircuitBreaker through Execute with two
// preallocated outcome functions rather than TwoStepCircuitBreaker: Allow
// returns a fresh closure per call (one 48-byte allocation per
// observation, i.e. per drain of every connection), and an observation
// has no separate "request" to bracket anyway.
type Breaker struct {
	cb *gobreaker.CircuitBreaker[struct{}]
	// state mirrors gobreaker's state. It is written only by the state
	// change hook, which gobreaker runs under its own lock, so it follows
	// every transition in order. Closed and HalfOpen change only through
	// observations, never by time alone (Interval is 0 and half-open has no
	// expiry), so reading them from the mirror is exact and skips
	// gobreaker's lock and clock; Open must ask gobreaker, which notices
	// that OpenFor has passed.
	state atomic.Int32
}

func healthyOutcome() (struct{}, error)   { return struct{}{}, nil }
func unhealthyOutcome() (struct{}, error) { return struct{}{}, errUnhealthy }

// New returns a closed breaker. name appears in nothing but gobreaker's own
// bookkeeping; use the connection id. onChange, if not nil, is called on
// every transition, including the lazy Open to HalfOpen one that happens
// inside whichever call first notices OpenFor has passed. It runs with the
// breaker's lock held: it must be quick and must not call back into the
// Breaker. New panics if cfg fails Validate.
func New(name string, cfg Config, onChange func(from, to State)) *Breaker {
	if err := cfg.Validate(); err != nil {
		panic(err)
	}
	cfg = cfg.WithDefaults()
	trip := uint32(cfg.TripAfter)
	st := gobreaker.Settings{
		Name: name,
		// In half-open gobreaker admits MaxRequests requests and closes once
		// that many succeed in a row, which is exactly ProbeSuccesses.
		MaxRequests: cfg.ProbeSuccesses,
		// Interval 0: closed-state counts are never reset on a timer, so
		// only a healthy observation breaks a run of unhealthy ones.
		Interval: 0,
		Timeout:  cfg.OpenFor,
		ReadyToTrip: func(c gobreaker.Counts) bool {
			return c.ConsecutiveFailures >= trip
		},
	}
	b := &Breaker{}
	st.OnStateChange = func(_ string, from, to gobreaker.State) {
		b.state.Store(int32(fromGobreaker(to)))
		if onChange != nil {
			onChange(fromGobreaker(from), fromGobreaker(to))
		}
	}
	b.cb = gobreaker.NewCircuitBreaker[struct{}](st)
	return b
}

// Observe records one health observation of the consumer. Observations
// made while the breaker is open are ignored: leaving Open is a matter of
// time, not of evidence. In half-open, observations beyond ProbeSuccesses
// that race with the one closing the breaker are ignored too. Safe from
// any goroutine.
func (b *Breaker) Observe(healthy bool) {
	// Execute refuses (ErrOpenState, ErrTooManyRequests) exactly the
	// observations documented above as ignored, so its error is dropped.
	if healthy {
		b.cb.Execute(healthyOutcome)
	} else {
		b.cb.Execute(unhealthyOutcome)
	}
}

// Degraded reports whether the connection should get summaries instead of
// the data plane: true only while Open. In HalfOpen it is false so that
// full delivery is what gets probed. Safe from any goroutine.
func (b *Breaker) Degraded() bool {
	return b.State() == Open
}

// State returns the current state, moving Open to HalfOpen first if OpenFor
// has passed. Safe from any goroutine.
func (b *Breaker) State() State {
	if s := State(b.state.Load()); s != Open {
		return s
	}
	return fromGobreaker(b.cb.State())
}

package delivery

import (
	"fmt"
	"time"

	"github.com/agentbridge/agentbridge/auth"
	"github.com/agentbridge/agentbridge/breaker"
	"github.com/agentbridge/agentbridge/ring"
	"github.com/agentbridge/agentbridge/session"
)

// Policy is what happens to a connection that falls behind (bridge/hello
// onSlow).
type Policy uint32

const (
	// Degrade: the connection gets bridge/summary and bridge/gap instead of
	// the data plane until it drains, then full delivery again.
	Degrade Policy = iota + 1
	// Disconnect: the connection is closed (WebSocket 1013) and its client
	// resumes by cursor; it never misses an event silently.
	Disconnect
	// Catchup: a lagging connection is not pushed the session's events any
	// more; the hub feeds it from the session log at its own pace
	// (Hub.Pump) until it has caught up. Nothing is lost while the log
	// holds it; past the log's retention it gets an exact bridge/gap.
	Catchup
)

// String returns the bridge/hello spelling: "catchup", "degrade" or
// "disconnect".
func (p Policy) String() string {
	switch p {
	case Degrade:
		return "degrade"
	case Disconnect:
		return "disconnect"
	case Catchup:
		return "catchup"
	default:
		return fmt.Sprintf("Policy(%d)", uint32(p))
	}
}

// ParsePolicy reads the bridge/hello spelling of a policy.
func ParsePolicy(s string) (Policy, error) {
	switch s {
	case "degrade":
		return Degrade, nil
	case "disconnect":
		return Disconnect, nil
	case "catchup":
		return Catchup, nil
	}
	return 0, fmt.Errorf("%w: %q (want \"catchup\", \"degrade\" or \"disconnect\")", ErrBadPolicy, s)
}

// DefaultPolicy is the policy of a connection whose client did not choose
// one: session.DefaultOnSlow, the one place that decides it.
func DefaultPolicy(r auth.Role) Policy {
	p, err := ParsePolicy(session.DefaultOnSlow(r))
	if err != nil {
		panic("delivery: session.DefaultOnSlow says " + err.Error())
	}
	return p
}

// Config tunes an Outbox. Every zero value means the documented default.
type Config struct {
	// Queue bounds the connection's queue; see ring.Config. A zero
	// ControlSlots here means MaxItems/8: a burst of small events must not
	// take the slot a response needs.
	Queue ring.Config
	// Breaker decides when the consumer counts as slow; see breaker.Config.
	Breaker breaker.Config
	// SummaryInterval is the least time between two bridge/summary
	// notifications of one session to a degraded connection. Zero means 1s.
	SummaryInterval time.Duration
	// DrainDeadline is how long the transport may stay blocked (its own
	// buffer over its watermark) without the peer taking a byte before each
	// further drain attempt counts as a missed deadline, an unhealthy
	// observation. Zero means 5s: long enough that a reader starved of CPU
	// for a moment (a GC, a loaded machine) is not taken for a stalled one.
	DrainDeadline time.Duration
	// StallTimeout is how long a connection may take nothing while
	// something is due (its transport holds bytes for it) before it is
	// closed (WebSocket 1013), whatever its onSlow policy; its client
	// resumes by cursor. Zero means 60s (--stall-timeout), the ACP SDK's
	// output-stall figure.
	StallTimeout time.Duration
	// TextTail is how many bytes of the agent's streamed text a summary
	// carries (cut at a UTF-8 boundary). Zero means 256.
	TextTail int
	// OnSlow is the policy until SetPolicy or SetDefaultPolicy says
	// otherwise. Zero means Degrade.
	OnSlow Policy
}

const (
	defaultSummaryInterval = time.Second
	defaultDrainDeadline   = 5 * time.Second
	defaultStallTimeout    = 60 * time.Second
	defaultTextTail        = 256
)

// WithDefaults returns c with every zero field replaced by its default.
func (c Config) WithDefaults() Config {
	c.Queue = c.Queue.WithDefaults()
	if c.Queue.ControlSlots == 0 {
		c.Queue.ControlSlots = c.Queue.MaxItems / 8
	}
	c.Breaker = c.Breaker.WithDefaults()
	if c.SummaryInterval == 0 {
		c.SummaryInterval = defaultSummaryInterval
	}
	if c.DrainDeadline == 0 {
		c.DrainDeadline = defaultDrainDeadline
	}
	if c.StallTimeout == 0 {
		c.StallTimeout = defaultStallTimeout
	}
	if c.TextTail == 0 {
		c.TextTail = defaultTextTail
	}
	if c.OnSlow == 0 {
		c.OnSlow = Degrade
	}
	return c
}

// Validate reports the first bad field of c, naming the value.
func (c Config) Validate() error {
	if err := c.Queue.Validate(); err != nil {
		return fmt.Errorf("%w: %w", ErrBadConfig, err)
	}
	if err := c.Breaker.Validate(); err != nil {
		return fmt.Errorf("%w: %w", ErrBadConfig, err)
	}
	c = c.WithDefaults()
	switch {
	case c.SummaryInterval < 0:
		return fmt.Errorf("%w: SummaryInterval %v must be positive", ErrBadConfig, c.SummaryInterval)
	case c.DrainDeadline < 0:
		return fmt.Errorf("%w: DrainDeadline %v must be positive", ErrBadConfig, c.DrainDeadline)
	case c.StallTimeout < 0:
		return fmt.Errorf("%w: StallTimeout %v must be positive", ErrBadConfig, c.StallTimeout)
	case c.TextTail < 0:
		return fmt.Errorf("%w: TextTail %d must be positive", ErrBadConfig, c.TextTail)
	case c.OnSlow != Degrade && c.OnSlow != Disconnect && c.OnSlow != Catchup:
		return fmt.Errorf("%w: OnSlow %v", ErrBadConfig, c.OnSlow)
	}
	return nil
}

// tickEvery is the summary timer's period while degraded: a quarter of the
// shorter of the summary interval and the breaker's open period, so a
// summary is at most that late and recovery is noticed that soon, but
// never busier than every 5ms nor lazier than every 250ms.
func (c Config) tickEvery() time.Duration {
	d := min(c.SummaryInterval, c.Breaker.OpenFor) / 4
	return min(max(d, 5*time.Millisecond), 250*time.Millisecond)
}

package delivery

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/agentbridge/agentbridge/codec/jsonrpc"
	"github.com/agentbridge/agentbridge/wire"
)

// Rate is a connection's input allowance: token buckets on messages and on
// bytes, each holding one second's worth. A zero field means that
// dimension is unlimited.
type Rate struct {
	Messages float64 // messages per second
	Bytes    float64 // bytes per second
}

// Unlimited reports whether r limits nothing.
func (r Rate) Unlimited() bool { return r.Messages <= 0 && r.Bytes <= 0 }

// String is the --rate spelling of r, e.g. "200/s,4194304B/s", or "off".
func (r Rate) String() string {
	var parts []string
	if r.Messages > 0 {
		parts = append(parts, strconv.FormatFloat(r.Messages, 'f', -1, 64)+"/s")
	}
	if r.Bytes > 0 {
		parts = append(parts, strconv.FormatFloat(r.Bytes, 'f', -1, 64)+"B/s")
	}
	if len(parts) == 0 {
		return "off"
	}
	return strings.Join(parts, ",")
}

var byteUnits = []struct {
	suffix string
	mult   float64
}{
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30},
	{"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9},
	{"B", 1},
}

// ParseRate reads a --rate value: a comma-separated list of at most one
// message rate ("200/s") and one byte rate ("4MiB/s"; units B, KB, MB, GB,
// KiB, MiB, GiB). "" or "off" means unlimited.
func ParseRate(s string) (Rate, error) {
	var r Rate
	s = strings.TrimSpace(s)
	if s == "" || s == "off" {
		return r, nil
	}
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		num, ok := strings.CutSuffix(part, "/s")
		if !ok {
			return Rate{}, fmt.Errorf("%w: %q: each rate ends in /s (e.g. 200/s,4MiB/s)", ErrBadRate, part)
		}
		mult, isBytes := 1.0, false
		for _, u := range byteUnits {
			if n, ok := strings.CutSuffix(num, u.suffix); ok {
				num, mult, isBytes = n, u.mult, true
				break
			}
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(num), 64)
		if err != nil || v <= 0 || v > 1e15 {
			return Rate{}, fmt.Errorf("%w: %q: want a positive number before the unit", ErrBadRate, part)
		}
		dst := &r.Messages
		if isBytes {
			dst = &r.Bytes
		}
		if *dst != 0 {
			return Rate{}, fmt.Errorf("%w: %q: the %s rate is given twice", ErrBadRate, s, map[bool]string{true: "byte", false: "message"}[isBytes])
		}
		*dst = v * mult
	}
	return r, nil
}

// Verdict is what a Limiter says about one input message.
type Verdict uint8

const (
	// Admit: route the message.
	Admit Verdict = iota
	// Refuse: over the rate. Answer a request with -32004 (OverloadedReply)
	// and drop a notification; neither reaches the agent.
	Refuse
	// Flood: the connection kept sending FloodFactor times its rate for
	// FloodWindows seconds in a row; close it (WebSocket 1008).
	Flood
)

const (
	// FloodFactor is how far over its rate a connection must send to count
	// as flooding.
	FloodFactor = 10
	// FloodWindows is how many consecutive one-second windows of flooding
	// close a connection.
	FloodWindows = 3
	// LogEvery is the least time between two log lines about one
	// connection's refused messages.
	LogEvery = 5 * time.Second
)

type bucket struct {
	rate, burst, tokens float64
}

func (b *bucket) refill(dt float64) {
	if b.rate > 0 {
		b.tokens = min(b.burst, b.tokens+dt*b.rate)
	}
}

// ok reports whether n fits: a message larger than the whole burst passes
// when the bucket is full and leaves it in debt, so it is not refused for
// ever.
func (b *bucket) ok(n float64) bool { return b.rate <= 0 || b.tokens >= min(n, b.burst) }

func (b *bucket) take(n float64) {
	if b.rate > 0 {
		b.tokens -= n
	}
}

// Limiter admits one connection's input by its Rate and detects flooding.
// It is owned by the goroutine that reads the connection; a nil *Limiter
// admits everything.
type Limiter struct {
	msgs, bytes bucket
	rate        Rate
	last        time.Time

	window       time.Time // start of the current one-second window
	offered      float64   // messages offered in the window
	offeredBytes float64
	strikes      int // consecutive flooding windows
	refused      int // refused since the last log line
	lastLog      time.Time
}

// NewLimiter returns a Limiter for r with full buckets, or nil when r is
// unlimited.
func NewLimiter(r Rate, now time.Time) *Limiter {
	if r.Unlimited() {
		return nil
	}
	l := &Limiter{rate: r, last: now, window: now}
	l.msgs = bucket{rate: r.Messages, burst: max(r.Messages, 1)}
	l.bytes = bucket{rate: r.Bytes, burst: max(r.Bytes, 1)}
	l.msgs.tokens, l.bytes.tokens = l.msgs.burst, l.bytes.burst
	return l
}

// Admit decides about one message of size bytes arriving at now. Reading
// goroutine only.
func (l *Limiter) Admit(now time.Time, size int) Verdict {
	if l == nil {
		return Admit
	}
	if dt := now.Sub(l.last).Seconds(); dt > 0 {
		l.msgs.refill(dt)
		l.bytes.refill(dt)
		l.last = now
	}
	if w := now.Sub(l.window); w >= time.Second {
		flooding := w < 2*time.Second &&
			((l.rate.Messages > 0 && l.offered > FloodFactor*l.rate.Messages) ||
				(l.rate.Bytes > 0 && l.offeredBytes > FloodFactor*l.rate.Bytes))
		if flooding {
			l.strikes++
		} else {
			l.strikes = 0
		}
		l.window, l.offered, l.offeredBytes = now, 0, 0
	}
	l.offered++
	l.offeredBytes += float64(size)
	if l.strikes >= FloodWindows {
		return Flood
	}
	n := float64(size)
	if l.msgs.ok(1) && l.bytes.ok(n) {
		l.msgs.take(1)
		l.bytes.take(n)
		return Admit
	}
	return Refuse
}

// Refused records that the caller refused a message Admit did not admit
// (it may forward some kinds regardless, such as answers the agent waits
// for) and reports whether a log line is due, at most one per LogEvery,
// with the number refused since the previous one. Reading goroutine only.
func (l *Limiter) Refused(now time.Time) (refused int, logNow bool) {
	if l == nil {
		return 0, false
	}
	l.refused++
	if !l.lastLog.IsZero() && now.Sub(l.lastLog) < LogEvery {
		return 0, false
	}
	refused, l.refused, l.lastLog = l.refused, 0, now
	return refused, true
}

// Rate returns the limiter's rate. Reading goroutine only.
func (l *Limiter) Rate() Rate {
	if l == nil {
		return Rate{}
	}
	return l.rate
}

// OverloadedReply is the -32004 answer to a request refused by the rate
// limit, with the request's own id.
func OverloadedReply(id []byte, r Rate) *wire.Msg {
	if len(id) == 0 {
		id = []byte("null")
	}
	b := jsonrpc.AppendError(nil, id, &jsonrpc.Error{Code: jsonrpc.CodeOverloaded,
		Message: "rate limited: this connection may send " + r.String() + "; slow down and retry"})
	return wire.Own(append(b, '\n'))
}

// Gate is what a transport does with one message under its input limit.
type Gate struct {
	Pass  bool      // hand the message to the router
	Flood bool      // close the connection (1008): Reason says why
	Reply *wire.Msg // for a refused request: the -32004 answer to queue
	Kind  string    // "request" or "notification", for metrics, when refused
	Log   int       // when > 0: log one line now, this many refused so far
	// Reason describes a flood close.
	Reason string
}

// Gate applies the limit to one complete message (borrowed): answers to the
// agent always pass (refusing them would strand the agent), a refused
// request is answered -32004 with its own id, a refused notification is
// dropped, and a connection far over its rate for long is closed. Only from
// the goroutine that reads the connection.
func (l *Limiter) Gate(now time.Time, msg []byte) Gate {
	switch l.Admit(now, len(msg)) {
	case Admit:
		return Gate{Pass: true}
	case Flood:
		return Gate{Flood: true, Reason: fmt.Sprintf("input flood: more than %d times the rate limit (%s) for %d seconds", FloodFactor, l.Rate(), FloodWindows)}
	}
	hd, err := jsonrpc.Peek(msg)
	if err == nil && hd.Kind == jsonrpc.KindResponse {
		return Gate{Pass: true}
	}
	g := Gate{Kind: "notification"}
	if err == nil && hd.Kind == jsonrpc.KindRequest {
		g.Kind, g.Reply = "request", OverloadedReply(hd.ID, l.Rate())
	}
	if n, logNow := l.Refused(now); logNow {
		g.Log = n
	}
	return g
}

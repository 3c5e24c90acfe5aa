// Package lograte holds back repeated log lines: a flood of bad input makes
// one line a second, not one per message, and the line says how many were
// held back. It is a leaf: it imports nothing of the project.
package lograte

import (
	"sync"
	"time"
)

// EverySecond lets through at most one log line a second and counts what it
// held back. The zero value is ready to use. Safe from any goroutine.
type EverySecond struct {
	mu   sync.Mutex
	last time.Time
	held int
}

// Allow reports whether to log now and, if so, how many lines were held
// back since the last one logged.
func (e *EverySecond) Allow(now time.Time) (bool, int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if now.Sub(e.last) < time.Second {
		e.held++
		return false, 0
	}
	n := e.held
	e.last, e.held = now, 0
	return true, n
}

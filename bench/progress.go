package bench

import (
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// progress is the live status line on stderr, drawn only when stderr is a
// terminal so that logs and CI output stay clean. Its methods are safe from
// any goroutine.
type progress struct {
	w  io.Writer
	on bool

	mu     sync.Mutex
	label  string
	status func() string // may be nil
	since  time.Time
	drawn  bool

	stop chan struct{}
	done chan struct{}
}

func newProgress(w io.Writer) *progress {
	p := &progress{w: w, stop: make(chan struct{}), done: make(chan struct{})}
	if f, ok := w.(*os.File); ok {
		if _, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS); err == nil {
			p.on = true
		}
	}
	if !p.on {
		close(p.done)
		return p
	}
	go func() {
		defer close(p.done)
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-p.stop:
				return
			case <-t.C:
				p.draw()
			}
		}
	}()
	return p
}

// set starts a new phase; status, when not nil, adds live counters.
func (p *progress) set(label string, status func() string) {
	p.mu.Lock()
	p.label, p.status, p.since = label, status, time.Now()
	p.mu.Unlock()
	p.draw()
}

func (p *progress) draw() {
	if !p.on {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.label == "" {
		return
	}
	line := p.label
	if p.status != nil {
		line += "  " + p.status()
	}
	line += "  " + strconv.FormatFloat(time.Since(p.since).Seconds(), 'f', 1, 64) + "s"
	fmt.Fprint(p.w, "\r\x1b[K"+line)
	p.drawn = true
}

// printf prints a line above the progress line (or plainly without one).
func (p *progress) printf(format string, a ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	msg := fmt.Sprintf(format, a...)
	if !strings.HasSuffix(msg, "\n") {
		msg += "\n"
	}
	if p.drawn {
		msg = "\r\x1b[K" + msg
		p.drawn = false
	}
	fmt.Fprint(p.w, msg)
}

// close erases the line and stops drawing.
func (p *progress) close() {
	if p.on {
		close(p.stop)
	}
	<-p.done
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.drawn {
		fmt.Fprint(p.w, "\r\x1b[K")
		p.drawn = false
	}
}

package connect

import (
	"errors"
	"sync"
	"time"
)

// errLinkClosed is a link's cause when the shim closed it itself.
var errLinkClosed = errors.New("connection closed by the shim")

// link runs one stream: a reader goroutine hands messages (owned copies)
// to in, a writer goroutine writes what send queues, flushing whenever its
// queue is empty. The run goroutine owns the link; the two goroutines only
// move bytes.
type link struct {
	st   stream
	in   chan []byte // closed when reading ends; then cause() says why
	out  chan []byte
	dead chan struct{} // closed by close or by a failed write
	done chan struct{} // closed when the writer has stopped
	once sync.Once

	rerr error // written by the reader before in is closed
	werr error // written before dead is closed
}

func startLink(st stream) *link {
	l := &link{st: st, in: make(chan []byte, 256), out: make(chan []byte, 256), dead: make(chan struct{}), done: make(chan struct{})}
	go l.reader()
	go l.writer()
	return l
}

func (l *link) reader() {
	defer close(l.in)
	for {
		b, err := l.st.read()
		if err != nil {
			l.rerr = err
			return
		}
		select {
		case l.in <- append([]byte(nil), b...):
		case <-l.dead:
			l.rerr = errLinkClosed
			return
		}
	}
}

func (l *link) writer() {
	defer close(l.done)
	for {
		select {
		case b, ok := <-l.out:
			if !ok {
				// finish: everything queued is written.
				if err := l.st.flush(); err != nil {
					l.kill(err)
					return
				}
				l.st.close(true)
				return
			}
			err := l.st.write(b)
			if err == nil && len(l.out) == 0 {
				err = l.st.flush()
			}
			if err != nil {
				l.kill(err)
				return
			}
		case <-l.dead:
			return
		}
	}
}

// kill ends the link after a failure; the reader then ends too.
func (l *link) kill(err error) {
	l.once.Do(func() {
		l.werr = err
		close(l.dead)
		l.st.close(false)
	})
}

// send queues msg for writing. A message queued on a link that dies is
// lost with it; the shim keeps its own copy of what matters. Run goroutine
// only.
func (l *link) send(msg []byte) {
	select {
	case l.out <- msg:
	case <-l.dead:
	}
}

// close drops the connection at once. Run goroutine only.
func (l *link) close() { l.kill(errLinkClosed) }

// finish writes what is queued, says goodbye and waits (briefly) for the
// writer. Run goroutine only; the link is not used afterwards.
func (l *link) finish() {
	close(l.out)
	select {
	case <-l.done:
	case <-time.After(writeTimeout):
	}
	l.kill(errLinkClosed)
}

// cause says why the link ended; valid once in is closed.
func (l *link) cause() error {
	select {
	case <-l.dead:
		if l.werr != errLinkClosed {
			return l.werr
		}
	default:
	}
	return l.rerr
}

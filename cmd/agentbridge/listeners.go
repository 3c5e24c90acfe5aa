package main

import (
	"context"
	"errors"

	"github.com/agentbridge/agentbridge/httpfront"
	"github.com/agentbridge/agentbridge/loop"
	"github.com/agentbridge/agentbridge/tlsserve"
)

// The daemon's listeners: the event loop (Unix socket, plain HTTP/1.1 and
// WebSocket on --listen, the agent's socket) and, with --tls-cert and
// --tls-key, the TLS listener on --listen instead of the loop's TCP
// listener. They are siblings: both ask one HTTP front (httpfront) about
// every request, and the TLS listener accepts through the loop's admission
// so --max-conns counts every listener.

var _ tlsserve.Metrics = (*loop.HTTPMetrics)(nil)

// listenConfig is what serve asks of its listeners.
type listenConfig struct {
	// Loop configures the event loop; its Front, and its Listen under TLS,
	// are set by newListeners.
	Loop loop.Config
	// Front configures the HTTP front; its Hub, Metrics, Scrape, Endpoint
	// and Logger are taken from Loop.
	Front httpfront.Config
	// TLSCert and TLSKey, both set, serve --listen over TLS (https, wss).
	TLSCert, TLSKey string
}

// listeners are the built, not yet started, listeners.
type listeners struct {
	loop  *loop.Server
	front *httpfront.Front
	tls   *tlsserve.Server // nil without TLS
	done  chan error
}

// newListeners builds the front and the listeners; nothing is bound yet.
func newListeners(cfg listenConfig) (*listeners, error) {
	lc := cfg.Loop
	if lc.UDS == "" && lc.Listen == "" {
		return nil, errors.New("both --uds and --listen are disabled; nothing to serve")
	}
	hm := lc.Metrics.HTTP(lc.Hub, lc.Logger)
	fc := cfg.Front
	fc.Hub, fc.Metrics, fc.Scrape, fc.Logger = lc.Hub, hm, hm.Scrape(), lc.Logger
	fc.Endpoint = hm.Endpoint(lc.Hub, lc.Delivery, lc.Rate)
	front, err := httpfront.New(fc)
	if err != nil {
		return nil, err
	}
	l := &listeners{front: front, done: make(chan error, 2)}
	tlsOn := cfg.TLSCert != "" && cfg.TLSKey != ""
	addr := lc.Listen
	if tlsOn {
		lc.Listen = ""
	}
	lc.Front = front
	if l.loop, err = loop.New(lc); err != nil {
		front.Close()
		return nil, err
	}
	if tlsOn && addr != "" {
		fc := front.Config()
		l.tls, err = tlsserve.New(tlsserve.Config{
			Addr: addr, Limit: l.loop.Limit, CertFile: cfg.TLSCert, KeyFile: cfg.TLSKey,
			Hub: lc.Hub, Front: front, Delivery: lc.Delivery, Rate: lc.Rate, MaxMessage: lc.MaxMessage,
			MaxHeaderBytes: fc.MaxHeaderBytes, Heartbeat: fc.Heartbeat, HeaderTimeout: fc.HeaderTimeout,
			IdleTimeout: fc.IdleTimeout, CloseTimeout: fc.CloseTimeout,
			Logger: lc.Logger.With("src", "tls"), Metrics: hm, OutboxMetrics: hm.Outbox,
		})
		if err != nil {
			front.Close()
			return nil, err
		}
	}
	return l, nil
}

// Start binds and serves: the TLS listener first, then the loop, whose
// Unix socket appears last (clients take it to mean the daemon is ready).
func (l *listeners) Start() error {
	if l.tls != nil {
		if err := l.tls.Start(); err != nil {
			return err
		}
		go func() {
			if err := <-l.tls.Done(); err != nil {
				l.done <- err
			}
		}()
	}
	if err := l.loop.Start(); err != nil {
		if l.tls != nil {
			_ = l.tls.Stop(context.Background())
		}
		return err
	}
	go func() { l.done <- <-l.loop.Done() }()
	return nil
}

// Done receives the first listener's serve error.
func (l *listeners) Done() <-chan error { return l.done }

// Connections is how many connections the listeners hold open.
func (l *listeners) Connections() int {
	n := l.loop.Connections() + l.front.Connections()
	if l.tls != nil {
		n += l.tls.Connections()
	}
	return n
}

// CloseIdle ends HTTP keep-alive on both listeners: idle connections are
// closed now, busy ones after their response.
func (l *listeners) CloseIdle() {
	if l.tls != nil {
		l.tls.CloseIdle()
	}
	l.loop.CloseIdle()
}

// Stop stops the TLS listener, then the loop (the agent's socket is the
// loop's: stop the agent first), then the front's reaper.
func (l *listeners) Stop(ctx context.Context) error {
	var err error
	if l.tls != nil {
		err = l.tls.Stop(ctx)
	}
	err = errors.Join(err, l.loop.Stop(ctx))
	l.front.Close()
	return err
}

package loop

import (
	"context"
	"net"

	"github.com/agentbridge/agentbridge/delivery"
	"github.com/agentbridge/agentbridge/tlsserve"
)

// With --tls-cert and --tls-key the TCP listener is package tlsserve, not
// gnet: gnet has no TLS, and crypto/tls needs a blocking net.Conn. The gnet
// engine then serves only the Unix socket. Both listeners feed the same
// session.Hub, and tlsserve asks this package's front for every routing and
// policy decision (auth, Origin, /healthz, /metrics, /events), so the
// endpoints, auth and limits are the same code on either.

var _ tlsserve.Front = (*front)(nil)

// startTLS starts the TLS server on ln (--listen, bound by listen and
// wrapped in the admission). Called by Start.
func (s *Server) startTLS(ln net.Listener) error {
	f := s.front
	if f == nil {
		f = newFront(s, HTTPConfig{})
		s.front = f
	}
	srv, err := tlsserve.New(tlsserve.Config{
		Addr:           s.cfg.Listen,
		Listener:       ln,
		CertFile:       f.cfg.TLSCert,
		KeyFile:        f.cfg.TLSKey,
		Hub:            s.hub,
		Front:          f,
		Delivery:       s.cfg.Delivery,
		Rate:           s.cfg.Rate,
		MaxMessage:     s.cfg.MaxMessage,
		MaxHeaderBytes: f.cfg.MaxHeaderBytes,
		Heartbeat:      f.cfg.Heartbeat,
		HeaderTimeout:  f.cfg.HeaderTimeout,
		IdleTimeout:    f.cfg.IdleTimeout,
		CloseTimeout:   f.cfg.CloseTimeout,
		Logger:         s.log.With("src", "tls"),
		Metrics:        tlsMetrics{m: s.cfg.Metrics, x: f.x},
		// One delivery.Metrics per connection, so /metrics counts both
		// listeners and debug logs name the peer.
		OutboxMetrics: func(peer string) delivery.Metrics {
			return s.cfg.Metrics.outbox(s.log.With("src", "tls"), func() string { return peer })
		},
	})
	if err != nil {
		_ = ln.Close()
		return err
	}
	if err := srv.Start(); err != nil {
		_ = ln.Close()
		return err
	}
	s.tls = srv
	go func() {
		if err := <-srv.Done(); err != nil {
			select {
			case s.done <- err:
			default:
			}
		}
	}()
	return nil
}

// stopTLS stops the TLS listener if it runs.
func (s *Server) stopTLS(ctx context.Context) error {
	if s.tls == nil {
		return nil
	}
	return s.tls.Stop(ctx)
}

// tlsConnections counts what the TLS listener holds open: WebSocket
// connections and SSE streams.
func (s *Server) tlsConnections() int {
	n := 0
	if s.tls != nil {
		n += s.tls.Connections()
	}
	if s.front != nil {
		n += int(s.front.httpStreams.Load())
	}
	return n
}

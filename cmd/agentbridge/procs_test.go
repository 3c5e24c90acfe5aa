package main

import (
	"testing"

	"github.com/agentbridge/agentbridge/agent"
)

// Spare Ps only where a goroutine of Go's netpoller serves traffic: with
// everything on the loops an idle P makes each loop wake-up wake a thread.
func TestProcsFor(t *testing.T) {
	for _, tc := range []struct {
		name string
		set  func(*serveConfig)
		want int
	}{
		{"agent on its socket, Unix and plain WebSocket", func(*serveConfig) {}, 3},
		{"--agent-stdio pipe", func(c *serveConfig) { c.stdio = agent.StdioPipe }, 5},
		{"TLS", func(c *serveConfig) { c.tlsCert = "cert.pem" }, 5},
		{"--terminal", func(c *serveConfig) { c.terminal = "/bin/sh" }, 5},
		{"blank --terminal is off", func(c *serveConfig) { c.terminal = "  " }, 3},
		{"--nats", func(c *serveConfig) { c.nats = "nats://127.0.0.1:4222" }, 5},
	} {
		c := &serveConfig{serveFlags: &serveFlags{}, stdio: agent.StdioSocket}
		tc.set(c)
		if got := procsFor(c, 3); got != tc.want {
			t.Errorf("%s: procsFor(3 loops) = %d, want %d", tc.name, got, tc.want)
		}
	}
}

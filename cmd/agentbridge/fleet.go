package main

import (
	"context"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/agentbridge/agentbridge/fleet"
	"github.com/agentbridge/agentbridge/session"
)

// joinFleet joins the fleet when --nats is set (nil, nil otherwise: no NATS
// code runs): the hub's journal then also feeds the fleet's stream,
// bridge/sessions names this node, and requests for other nodes' sessions
// are forwarded to them.
func joinFleet(f *serveFlags, hcfg *session.Config, log *slog.Logger) (*fleet.Fleet, error) {
	if f.nats == "" {
		return nil, nil
	}
	node := f.node
	if node == "" {
		h, err := os.Hostname()
		if err != nil {
			return nil, err
		}
		// A host name's dots and other characters are not subject-safe.
		node = strings.Map(func(r rune) rune {
			if r == '-' || r == '_' || (r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z') || (r >= '0' && r <= '9') {
				return r
			}
			return '_'
		}, h)
		if len(node) > 64 {
			node = node[:64]
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	fl, err := fleet.Join(ctx, fleet.Config{URL: f.nats, Node: node, Fleet: f.fleet, Logger: log.With("src", "fleet")})
	if err != nil {
		return nil, err
	}
	if hcfg.Journal != nil {
		hcfg.Journal = fleet.Tee(hcfg.Journal, fl)
	} else {
		hcfg.Journal = fl
	}
	hcfg.Node = node
	hcfg.Remote = fl
	log.Info("joined the fleet", "nats", f.nats, "fleet", f.fleet, "node", node)
	return fl, nil
}

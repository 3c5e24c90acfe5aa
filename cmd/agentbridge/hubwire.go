package main

import (
	"errors"
	"fmt"

	"github.com/agentbridge/agentbridge/agent"
	"github.com/agentbridge/agentbridge/audit"
	"github.com/agentbridge/agentbridge/session"
	"github.com/agentbridge/agentbridge/store"
)

// The routing core defines what it needs of the agent, the store and the
// audit log as its own interfaces and types (session imports none of
// them); here they are wired to the concrete ones.

var (
	_ session.Journal        = (*store.Store)(nil)
	_ session.JournalDeleter = (*store.Store)(nil)
	_ session.SplicingAgent  = hubAgent{}
)

// hubAgent is the agent supervisor as the hub sees it: its overload error
// is also the hub's (-32004 for the client rather than -32003).
type hubAgent struct{ *agent.Supervisor }

func (a hubAgent) Send(msg []byte) error { return hubAgentErr(a.Supervisor.Send(msg)) }

func (a hubAgent) SendSplice(msg []byte, start, end int, repl []byte) error {
	return hubAgentErr(a.Supervisor.SendSplice(msg, start, end, repl))
}

func hubAgentErr(err error) error {
	if err != nil && errors.Is(err, agent.ErrOverloaded) {
		return fmt.Errorf("%w (%w)", session.ErrAgentOverloaded, err)
	}
	return err
}

// auditHook hands the hub's decisions to the audit log.
func auditHook(l *audit.Log) func(session.AuditRecord) {
	return func(r session.AuditRecord) { l.Record(audit.Record(r)) }
}

// restored converts the sessions the store recovered for Hub.Restore; the
// events' bodies are shared, not copied.
func restored(rec []store.Session) []session.RestoredSession {
	out := make([]session.RestoredSession, len(rec))
	for i, s := range rec {
		out[i] = session.RestoredSession{ID: s.ID, Seq: s.Seq, Events: make([]session.RestoredEvent, len(s.Events))}
		for j, e := range s.Events {
			out[i].Events[j] = session.RestoredEvent(e)
		}
	}
	return out
}

package delivery

import (
	"bytes"
	"time"
	"unicode/utf8"

	"github.com/agentbridge/agentbridge/codec/jsonrpc"
)

// acc is what one session's events a connection did not get add up to,
// until it is reported as bridge/gap (and bridge/summary). Guarded by the
// Outbox's mu.
type acc struct {
	sid  string
	runs []run // skipped seqs in stream order; contiguous ones merged

	// Since the last summary, for the next one.
	owed    bool   // a degraded connection skipped events: a summary is due
	dropped uint64 // events skipped
	bytes   uint64 // their bytes as this connection would have got them
	seq     uint64 // the last skipped seq

	tail        []byte // the tail of the session's streamed text, kept across summaries
	lastSummary time.Time
}

type run struct {
	from, to uint64
	why      string
}

// addRun adds seq to the runs. A seq that follows the last run extends it
// whatever the reason: nothing of the session was queued in between, and
// a stalled degraded reader that the breaker keeps probing alternates
// reasons (degraded, then "no free slot" while it is probed) with every
// round; splitting on the reason would fragment one stretch into a run per
// round. A run keeps the reason of its first seq.
func (a *acc) addRun(seq uint64, why string) {
	if n := len(a.runs); n > 0 {
		r := &a.runs[n-1]
		if seq == r.to+1 {
			r.to = seq
			return
		}
	}
	a.runs = append(a.runs, run{from: seq, to: seq, why: why})
}

// appendTail appends text to tail and keeps at most limit bytes of the end,
// cut at a UTF-8 boundary so the tail is always valid text.
func appendTail(tail []byte, text string, limit int) []byte {
	if len(text) >= limit {
		tail = append(tail[:0], text[len(text)-limit:]...)
	} else {
		tail = append(tail, text...)
	}
	if cut := len(tail) - limit; cut > 0 {
		tail = tail[:copy(tail, tail[cut:])]
	}
	i := 0
	for i < len(tail) && i < utf8.UTFMax && !utf8.RuneStart(tail[i]) {
		i++
	}
	if i > 0 {
		tail = tail[:copy(tail, tail[i:])]
	}
	return tail
}

var chunkMarker = []byte(`agent_message_chunk`)

// chunkUpdate is the part of an ACP session/update that carries streamed
// text.
type chunkUpdate struct {
	SessionUpdate string `json:"sessionUpdate"`
	Content       struct {
		Text string `json:"text"`
	} `json:"content"`
}

type chunkNotification struct {
	Params struct {
		Update *chunkUpdate `json:"update"`
		// A bridge/event envelope holds the notification in message.
		Message *struct {
			Params struct {
				Update *chunkUpdate `json:"update"`
			} `json:"params"`
		} `json:"message"`
	} `json:"params"`
}

// ChunkText returns the text an ACP agent_message_chunk notification (or a
// bridge/event envelope of one) streams: params.update.content.text, or ""
// for any other message. Outboxes call it through wire.Msg.Text, so it runs
// once per message however many degraded connections skip it.
func ChunkText(body []byte) string {
	if !bytes.Contains(body, chunkMarker) {
		return ""
	}
	var n chunkNotification
	if jsonrpc.Unmarshal(body, &n) != nil {
		return ""
	}
	u := n.Params.Update
	if u == nil && n.Params.Message != nil {
		u = n.Params.Message.Params.Update
	}
	if u == nil || u.SessionUpdate != "agent_message_chunk" {
		return ""
	}
	return u.Content.Text
}

package wire

import "strconv"

// The bridge/* notifications the daemon sends of its own accord, built here
// once for every package that sends or rebuilds them (session, delivery,
// connect). Each returns a *Msg ready to queue: NDJSON line included, JSON
// built by hand (no reflection: gaps and summaries are built on the
// delivery path). The bridge/event envelope is Msg.Enveloped.

// GapMsg builds bridge/gap {sessionId, fromSeq, toSeq, reason}: the events
// fromSeq..toSeq of the session that a connection did not get.
func GapMsg(sessionID string, from, to uint64, reason string) *Msg {
	b := make([]byte, 0, 96+len(sessionID)+len(reason))
	b = append(b, `{"jsonrpc":"2.0","method":"bridge/gap","params":{"sessionId":`...)
	b = AppendString(b, sessionID)
	b = append(b, `,"fromSeq":`...)
	b = strconv.AppendUint(b, from, 10)
	b = append(b, `,"toSeq":`...)
	b = strconv.AppendUint(b, to, 10)
	b = append(b, `,"reason":`...)
	b = AppendString(b, reason)
	b = append(b, "}}\n"...)
	return Own(b)
}

// SummaryMsg builds bridge/summary {sessionId, seq, dropped, bytes, text}:
// a degraded connection skipped dropped events (bytes in all) of the
// session up to seq; text is the tail of the session's streamed text.
func SummaryMsg(sessionID string, seq, dropped, nbytes uint64, text string) *Msg {
	b := make([]byte, 0, 112+len(sessionID)+len(text)+len(text)/8)
	b = append(b, `{"jsonrpc":"2.0","method":"bridge/summary","params":{"sessionId":`...)
	b = AppendString(b, sessionID)
	b = append(b, `,"seq":`...)
	b = strconv.AppendUint(b, seq, 10)
	b = append(b, `,"dropped":`...)
	b = strconv.AppendUint(b, dropped, 10)
	b = append(b, `,"bytes":`...)
	b = strconv.AppendUint(b, nbytes, 10)
	b = append(b, `,"text":`...)
	b = AppendString(b, text)
	b = append(b, "}}\n"...)
	return Own(b)
}

// StatusMsg builds bridge/status {sessionId?, status}; an empty sessionID
// (the agent's own state) leaves the key out.
func StatusMsg(sessionID, status string) *Msg {
	b := make([]byte, 0, 80+len(sessionID)+len(status))
	b = append(b, `{"jsonrpc":"2.0","method":"bridge/status","params":{`...)
	if sessionID != "" {
		b = append(b, `"sessionId":`...)
		b = AppendString(b, sessionID)
		b = append(b, ',')
	}
	b = append(b, `"status":`...)
	b = AppendString(b, status)
	b = append(b, "}}\n"...)
	return Own(b)
}

// ResolvedMsg builds bridge/resolved {sessionId?, id}: the agent request id
// (as clients saw it) was answered by another client.
func ResolvedMsg(sessionID string, id int64) *Msg {
	b := make([]byte, 0, 80+len(sessionID))
	b = append(b, `{"jsonrpc":"2.0","method":"bridge/resolved","params":{`...)
	if sessionID != "" {
		b = append(b, `"sessionId":`...)
		b = AppendString(b, sessionID)
		b = append(b, ',')
	}
	b = append(b, `"id":`...)
	b = strconv.AppendInt(b, id, 10)
	b = append(b, "}}\n"...)
	return Own(b)
}

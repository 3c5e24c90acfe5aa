package session

import (
	"container/heap"
	"encoding/base64"
	"fmt"
)

// bridge/sessions is paginated like ACP's session/list: sessions in
// ascending sessionId order (bytewise), at most limit per page, and a
// nextCursor while more remain. The cursor is the last sessionId of the
// page (base64url, opaque to clients), so paging is stable while sessions
// come and go: a session that existed for the whole walk is listed exactly
// once; one created or removed meanwhile may or may not be.

const (
	// DefaultListLimit is the page size when limit is absent.
	DefaultListLimit = 100
	// MaxListLimit is the largest page; a larger limit is refused.
	MaxListLimit = 1000
	// maxListBytes bounds a page's rows (session ids are the agent's and
	// may be long): a page ends early rather than approach a connection's
	// control ceiling.
	maxListBytes = 256 << 10
)

type listParams struct {
	Cursor    *string `json:"cursor"`
	Limit     *int    `json:"limit"`
	Status    *string `json:"status"`
	SessionID *string `json:"sessionId"`
}

type listResult struct {
	Sessions   []SessionInfo `json:"sessions"`
	NextCursor string        `json:"nextCursor,omitempty"`
}

// listSessions answers bridge/sessions. Precondition: h.mu held.
func (h *Hub) listSessions(cl *Client, id []byte, p listParams) {
	limit := DefaultListLimit
	if p.Limit != nil {
		if *p.Limit < 1 || *p.Limit > MaxListLimit {
			h.replyError(cl, id, codeInvalidParams, fmt.Sprintf("bridge/sessions: limit must be between 1 and %d, not %d", MaxListLimit, *p.Limit))
			return
		}
		limit = *p.Limit
	}
	var status Status
	if p.Status != nil {
		switch st := Status(*p.Status); st {
		case StatusIdle, StatusRunning, StatusAwaitingHITL, StatusBlocked, StatusClosed:
			status = st
		default:
			h.replyError(cl, id, codeInvalidParams, fmt.Sprintf("bridge/sessions: status must be idle, running, awaiting_hitl, blocked or closed, not %q", *p.Status))
			return
		}
	}
	after, first := "", true
	if p.Cursor != nil {
		b, err := base64.RawURLEncoding.DecodeString(*p.Cursor)
		if err != nil || len(b) == 0 {
			h.replyError(cl, id, codeInvalidParams, fmt.Sprintf("bridge/sessions: cursor %q is not one this daemon returned as nextCursor", shortString(*p.Cursor)))
			return
		}
		after, first = string(b), false
	}
	match := func(s *Session) bool { return status == "" || s.status == status }
	res := listResult{Sessions: []SessionInfo{}}
	if p.SessionID != nil {
		if s := h.sessions[*p.SessionID]; s != nil && match(s) && (first || s.ID > after) {
			res.Sessions = append(res.Sessions, info(s))
		}
		h.replyResult(cl, id, res)
		return
	}
	// The limit+1 smallest ids past the cursor, without sorting them all:
	// a max-heap of the best so far, O(n log limit) per page.
	var best idHeap
	for sid, s := range h.sessions {
		if (!first && sid <= after) || !match(s) {
			continue
		}
		if len(best) <= limit {
			heap.Push(&best, sid)
		} else if sid < best[0] {
			best[0] = sid
			heap.Fix(&best, 0)
		}
	}
	more := len(best) > limit
	if more {
		heap.Pop(&best) // the limit+1st: only says there is a next page
	}
	ids := make([]string, len(best))
	for i := len(ids) - 1; i >= 0; i-- {
		ids[i] = heap.Pop(&best).(string)
	}
	size := 0
	for i, sid := range ids {
		if size > maxListBytes {
			more = true
			ids = ids[:i]
			break
		}
		res.Sessions = append(res.Sessions, info(h.sessions[sid]))
		size += len(sid) + 80
	}
	if more && len(ids) > 0 {
		res.NextCursor = base64.RawURLEncoding.EncodeToString([]byte(ids[len(ids)-1]))
	}
	h.replyResult(cl, id, res)
}

func info(s *Session) SessionInfo {
	return SessionInfo{SessionID: s.ID, Status: s.status, Seq: s.seq, Clients: len(s.attached), OwnerConnected: s.owner != nil}
}

func shortString(s string) string {
	if len(s) > 40 {
		return s[:40] + "…"
	}
	return s
}

// idHeap is a max-heap of session ids.
type idHeap []string

func (h idHeap) Len() int           { return len(h) }
func (h idHeap) Less(i, j int) bool { return h[i] > h[j] }
func (h idHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *idHeap) Push(x any)        { *h = append(*h, x.(string)) }
func (h *idHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

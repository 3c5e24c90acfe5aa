package auth

import (
	"net/http"
	"strings"
)

// Where a token may travel on the listener (CONTRACT.md "Auth").
const (
	// SubprotocolPrefix prefixes the token in a Sec-WebSocket-Protocol
	// entry, the one header a browser's WebSocket API lets a page set.
	SubprotocolPrefix = "agentbridge.token."
	// QueryParam is the URL query parameter carrying a token.
	QueryParam = "token"
	// CookieName is the cookie carrying a token.
	CookieName = "agentbridge_token"
)

// TokenFromRequest finds the token in r, looking in the contract's order
// and taking the first non-empty one: Authorization: Bearer, a
// Sec-WebSocket-Protocol entry agentbridge.token.<T>, ?token=, the cookie
// agentbridge_token. When the token came from a subprotocol entry,
// subprotocol is that exact entry, which the server must select in its
// handshake response (browsers fail a handshake whose offered protocols
// were all ignored); otherwise it is "". Safe from any goroutine.
func TokenFromRequest(r *http.Request) (token, subprotocol string) {
	if h := r.Header.Get("Authorization"); h != "" {
		scheme, rest, ok := strings.Cut(strings.TrimSpace(h), " ")
		if ok && strings.EqualFold(scheme, "Bearer") {
			if t := strings.TrimSpace(rest); t != "" {
				return t, ""
			}
		}
	}
	// The canonical spelling: Values canonicalises any other into a new
	// string on every handshake.
	for _, line := range r.Header.Values("Sec-Websocket-Protocol") {
		for p := range strings.SplitSeq(line, ",") {
			p = strings.TrimSpace(p)
			if t, ok := strings.CutPrefix(p, SubprotocolPrefix); ok && t != "" {
				return t, p
			}
		}
	}
	if r.URL != nil {
		if t := r.URL.Query().Get(QueryParam); t != "" {
			return t, ""
		}
	}
	if c, err := r.Cookie(CookieName); err == nil && c.Value != "" {
		return c.Value, ""
	}
	return "", ""
}

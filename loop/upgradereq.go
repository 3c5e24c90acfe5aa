package loop

import (
	"net/http"
	"net/textproto"
	"net/url"
	"strings"
	"sync"
)

// The WebSocket handshake on /acp is the one request every WebSocket client
// makes, and the only one that stays on the connection afterwards. Parsed
// by net/http it left ~1.3 KB of garbage per connection (the textproto
// reader's strings and header map, the Request, the URL): most of the gap
// between an idle WebSocket connection's live heap and its RSS after a
// burst of connects. parseUpgrade takes the common, plain form of that
// request itself, into a pooled Request whose only allocation is one copy
// of the header block; everything else (other methods and paths, a body,
// repeated fields, obs-fold, bare LF, anything it is not sure of) it
// declines, and net/http parses it as before, with net/http's own errors.
// What it accepts, net/http accepts with the same fields
// (FuzzParseUpgrade), so the route, auth and handshake checks downstream
// see the same request either way.

// upgradePath is the one path parseUpgrade takes.
const upgradePath = "/acp"

// maxUpgradeFields is how many header fields parseUpgrade takes; a
// handshake with more (a browser sends ~15) goes to net/http.
const maxUpgradeFields = 32

// upgradeReq is a pooled request for parseUpgrade: the Request, its URL and
// Header, and the backing array of the header's one-value slices.
type upgradeReq struct {
	req  http.Request
	url  url.URL
	hdr  http.Header
	vals [maxUpgradeFields]string
}

var upgradeReqs = sync.Pool{New: func() any {
	return &upgradeReq{hdr: make(http.Header, maxUpgradeFields)}
}}

// release returns u to the pool. Nothing may hold u.req, its Header or its
// URL afterwards (strings taken from them stay valid: they are ordinary Go
// strings).
func (u *upgradeReq) release() {
	clear(u.hdr)
	clear(u.vals[:])
	u.req = http.Request{}
	u.url = url.URL{}
	upgradeReqs.Put(u)
}

// wsKeys are the canonical forms of the handshake's own fields, which
// clients spell Sec-WebSocket-*: canonicalising those would allocate.
var wsKeys = [...]string{"Sec-Websocket-Key", "Sec-Websocket-Version", "Sec-Websocket-Protocol", "Sec-Websocket-Extensions"}

// canonicalKey is textproto.CanonicalMIMEHeaderKey without an allocation
// for a key already canonical (a substring of the block is returned) or
// one of wsKeys.
func canonicalKey(k string) string {
	for _, w := range wsKeys {
		if len(k) == len(w) && strings.EqualFold(k, w) {
			return w
		}
	}
	return textproto.CanonicalMIMEHeaderKey(k)
}

// parseUpgrade parses block, a complete request header block ending in
// CRLF CRLF (borrowed), when it is a plain WebSocket handshake on /acp:
// "GET /acp[?query] HTTP/1.1", then fields "Name: value" each on one
// CRLF-terminated line, at most maxUpgradeFields of them, no field twice,
// that wsAttempt takes for a handshake, with no Content-Length,
// Transfer-Encoding or Trailer. It returns nil for anything else. The
// caller serves the request, then calls release.
func parseUpgrade(block []byte) *upgradeReq {
	const line = "GET " + upgradePath
	if len(block) < len(line) || string(block[:len(line)]) != line {
		return nil
	}
	s := string(block) // the one allocation: every string below is a slice of it
	// Request line.
	eol := strings.Index(s, "\r\n")
	if eol < 0 {
		return nil
	}
	target, ok := strings.CutSuffix(s[len("GET "):eol], " HTTP/1.1")
	if !ok || !validUpgradeTarget(target) {
		return nil
	}
	u := upgradeReqs.Get().(*upgradeReq)
	u.url.Path = upgradePath
	if q, ok := strings.CutPrefix(target, upgradePath+"?"); ok {
		u.url.RawQuery = q
	}
	n := 0
	for pos := eol + 2; ; {
		eol := strings.Index(s[pos:], "\r\n")
		if eol < 0 { // not a whole block
			u.release()
			return nil
		}
		field := s[pos : pos+eol]
		pos += eol + 2
		if field == "" {
			break // the blank line that ends the block
		}
		name, value, ok := strings.Cut(field, ":")
		if !ok || name == "" || n == maxUpgradeFields || !validFieldName(name) || !validFieldValue(value) {
			u.release()
			return nil
		}
		key := canonicalKey(name)
		if _, dup := u.hdr[key]; dup {
			u.release()
			return nil
		}
		switch key {
		case "Content-Length", "Transfer-Encoding", "Trailer":
			u.release()
			return nil
		}
		u.vals[n] = strings.Trim(value, " \t")
		u.hdr[key] = u.vals[n : n+1 : n+1]
		n++
	}
	// As net/http's readRequest: Pragma: no-cache stands for
	// Cache-Control: no-cache when that is absent (RFC 7234 §5.4).
	if p := u.hdr["Pragma"]; len(p) == 1 && p[0] == "no-cache" && u.hdr["Cache-Control"] == nil {
		if n == maxUpgradeFields {
			u.release()
			return nil
		}
		u.vals[n] = "no-cache"
		u.hdr["Cache-Control"] = u.vals[n : n+1 : n+1]
	}
	u.req = http.Request{
		Method:     http.MethodGet,
		URL:        &u.url,
		Proto:      "HTTP/1.1",
		ProtoMajor: 1,
		ProtoMinor: 1,
		Header:     u.hdr,
		Body:       http.NoBody,
		Host:       u.hdr.Get("Host"),
		RequestURI: target,
		Close:      hasCloseToken(u.hdr["Connection"]),
	}
	delete(u.hdr, "Host") // as http.ReadRequest: the value is in req.Host
	if !wsAttempt(&u.req) {
		// A Streamable HTTP GET, which may outlive this call.
		u.release()
		return nil
	}
	return u
}

// validUpgradeTarget accepts "/acp" and "/acp?query" with a non-empty query
// of printable ASCII and no '?' after the first: what url.ParseRequestURI
// reads as exactly that path and that RawQuery.
func validUpgradeTarget(t string) bool {
	if t == upgradePath {
		return true
	}
	q, ok := strings.CutPrefix(t, upgradePath+"?")
	if !ok || q == "" {
		return false
	}
	for i := 0; i < len(q); i++ {
		if c := q[i]; c <= ' ' || c >= 0x7f || c == '?' {
			return false
		}
	}
	return true
}

// validFieldName reports whether every byte of name is a token character
// (RFC 9110 §5.6.2), as textproto requires of a field name.
func validFieldName(name string) bool {
	for i := 0; i < len(name); i++ {
		if !isTchar(name[i]) {
			return false
		}
	}
	return true
}

func isTchar(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}

// validFieldValue accepts visible ASCII, space and tab only: no control
// bytes (which textproto refuses) and, conservatively, no obs-text (which
// it takes; such a request goes to net/http).
func validFieldValue(v string) bool {
	for i := 0; i < len(v); i++ {
		if c := v[i]; (c < ' ' && c != '\t') || c >= 0x7f {
			return false
		}
	}
	return true
}

// hasCloseToken is net/http's reading of Connection for HTTP/1.1: close
// among its comma-separated tokens, in any case.
func hasCloseToken(conn []string) bool {
	for _, v := range conn {
		for t := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.Trim(t, " \t"), "close") {
				return true
			}
		}
	}
	return false
}

package auth

import (
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
)

// OriginPolicy decides which WebSocket handshakes may proceed by their
// Origin header. It is immutable after NewOriginPolicy; safe from any
// goroutine.
type OriginPolicy struct {
	any     bool
	allowed map[origin]struct{}
}

// origin is a normalised web origin: lower-case scheme and host, explicit
// port (the scheme's default filled in when absent).
type origin struct {
	scheme, host, port string
}

// NewOriginPolicy builds a policy from --allow-origin values. Each is "*"
// (any origin, including "null") or scheme://host[:port], e.g.
// "https://ide.example.com" or "http://localhost:3000"; a trailing "/" is
// tolerated, any other path, query, fragment or user info is not. ws:// and
// wss:// are refused because browsers never send them as an Origin.
// Non-web schemes (chrome-extension://ID, tauri://localhost) are allowed
// and matched exactly. The error names the bad entry.
func NewOriginPolicy(allowed []string) (*OriginPolicy, error) {
	p := &OriginPolicy{allowed: make(map[origin]struct{}, len(allowed))}
	for _, a := range allowed {
		if strings.TrimSpace(a) == "*" {
			p.any = true
			continue
		}
		o, err := parseOrigin(strings.TrimSpace(a), true)
		if err != nil {
			return nil, fmt.Errorf("%w %q: %v", ErrBadOrigin, a, err)
		}
		p.allowed[o] = struct{}{}
	}
	return p, nil
}

// defaultPort returns the port a browser implies for scheme, or "" for a
// scheme without one.
func defaultPort(scheme string) string {
	switch scheme {
	case "http":
		return "80"
	case "https":
		return "443"
	}
	return ""
}

// parseOrigin normalises s. configured relaxes the rules a hand-written
// --allow-origin value may break harmlessly (a trailing slash).
func parseOrigin(s string, configured bool) (origin, error) {
	u, err := url.Parse(s)
	if err != nil {
		return origin{}, fmt.Errorf("want scheme://host[:port]")
	}
	switch {
	case u.Scheme == "" || u.Opaque != "" || u.Host == "":
		return origin{}, fmt.Errorf("want scheme://host[:port]")
	case u.Scheme == "ws" || u.Scheme == "wss":
		return origin{}, fmt.Errorf("browsers send http or https origins, not %s", u.Scheme)
	case u.User != nil:
		return origin{}, fmt.Errorf("an origin has no user info")
	case u.RawQuery != "" || u.ForceQuery || u.Fragment != "" || strings.ContainsAny(s, "?#"):
		return origin{}, fmt.Errorf("an origin has no query or fragment")
	case u.Path != "" && !(configured && u.Path == "/"):
		return origin{}, fmt.Errorf("an origin has no path")
	}
	host := strings.ToLower(u.Hostname())
	if host == "" {
		return origin{}, fmt.Errorf("missing host")
	}
	port := u.Port()
	if port == "" {
		if strings.HasSuffix(u.Host, ":") {
			return origin{}, fmt.Errorf("empty port")
		}
		port = defaultPort(u.Scheme)
	} else if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 || port[0] == '0' {
		return origin{}, fmt.Errorf("bad port %q", port)
	}
	return origin{scheme: u.Scheme, host: host, port: port}, nil
}

// Allowed reports whether a WebSocket handshake with this Origin header
// may proceed; host is the request's Host header and tls whether the
// request arrived over TLS. Allowed are: no Origin (not a browser), any
// origin under "*", a configured origin, and the request's own origin
// (scheme from tls, host and port from Host). "null" (sandboxed frames,
// file:// pages) is refused unless "*" is configured. Behind a proxy that
// terminates TLS the request's own origin is computed as http://; list the
// public origin with --allow-origin. Safe from any goroutine.
func (p *OriginPolicy) Allowed(originHeader, host string, tls bool) bool {
	if originHeader == "" || p.any {
		return true
	}
	if originHeader == "null" {
		return false
	}
	o, err := parseOrigin(originHeader, false)
	if err != nil {
		return false
	}
	if _, ok := p.allowed[o]; ok {
		return true
	}
	self, ok := requestOrigin(host, tls)
	return ok && o == self
}

// requestOrigin is the origin a page served by this request's host would
// have.
func requestOrigin(host string, tls bool) (origin, bool) {
	if host == "" {
		return origin{}, false
	}
	scheme := "http"
	if tls {
		scheme = "https"
	}
	h, port, err := net.SplitHostPort(host)
	if err != nil {
		// No port: a bare name or a bracketed IPv6 literal.
		h, port = host, ""
		if strings.HasPrefix(h, "[") && strings.HasSuffix(h, "]") {
			h = h[1 : len(h)-1]
		} else if strings.Contains(h, ":") {
			return origin{}, false
		}
	}
	if port == "" {
		port = defaultPort(scheme)
	} else if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 || port[0] == '0' {
		return origin{}, false
	}
	if h == "" {
		return origin{}, false
	}
	return origin{scheme: scheme, host: strings.ToLower(h), port: port}, true
}

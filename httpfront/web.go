package httpfront

import (
	"bytes"
	"html"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/agentbridge/agentbridge/auth"
	"github.com/agentbridge/agentbridge/web"
)

// The dashboard (GET /) and the terminal page (GET /terminal), served from
// package web on both listeners through route. Auth for a browser: a login
// form (POST /login) or ?token= once sets the agentbridge_token cookie
// (HttpOnly, SameSite=Strict, Secure under TLS) and redirects to a clean
// URL; the page's WebSocket to /acp and its fetches of /metrics then carry
// the cookie, under the same token and Origin checks as any client.
// Static files under /ui/ need no token: they hold no data.

// pageCSP allows scripts and styles from the daemon only: no inline script,
// no eval. Inline styles are allowed because xterm.js sets them.
const pageCSP = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; font-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"

// maxLoginBody bounds the login form's body.
const maxLoginBody = 4 << 10

// pageReply is an HTML page with the page headers. Referrer-Policy is
// same-origin, not no-referrer: under no-referrer a browser sends
// "Origin: null" with the login form, which the Origin policy refuses.
func pageReply(status int, body []byte, hdr ...string) *Reply {
	h := append([]string{"Content-Security-Policy", pageCSP, "Referrer-Policy", "same-origin", "X-Frame-Options", "DENY"}, hdr...)
	return &Reply{Status: status, CType: "text/html; charset=utf-8", Body: body, Hdr: h}
}

// loginPage is the login form with an optional message.
func loginPage(status int, msg string, hdr ...string) *Reply {
	a, _ := web.Lookup("login.html")
	body := a.Body
	if msg != "" {
		body = bytes.Replace(body, []byte(`<p id="error" class="error" role="alert"></p>`),
			[]byte(`<p id="error" class="error" role="alert">`+html.EscapeString(msg)+`</p>`), 1)
	}
	return pageReply(status, body, hdr...)
}

func tokenCookie(tok string, tls bool) string {
	c := &http.Cookie{Name: auth.CookieName, Value: tok, Path: "/", HttpOnly: true, Secure: tls, SameSite: http.SameSiteStrictMode}
	return c.String()
}

func clearCookie(tls bool) string {
	c := &http.Cookie{Name: auth.CookieName, Value: "", Path: "/", MaxAge: -1, HttpOnly: true, Secure: tls, SameSite: http.SameSiteStrictMode}
	return c.String()
}

// isUpgrade reports whether r asks for a WebSocket.
func isUpgrade(r *http.Request) bool { return r.Header.Get("Upgrade") != "" }

// web answers the dashboard's paths, or returns nil for a path it does not
// serve. Any goroutine.
func (f *Front) web(r *http.Request, tls bool) *Reply {
	get := r.Method == http.MethodGet || r.Method == http.MethodHead
	p := r.URL.Path
	switch {
	case p == "/":
		if !get {
			return notAllowed(r.Method, "GET, HEAD")
		}
		return f.page(r, tls, "index.html")
	case p == "/login":
		if r.Method != http.MethodPost {
			return notAllowed(r.Method, "POST")
		}
		return f.login(r, tls)
	case p == "/logout":
		if r.Method != http.MethodPost {
			return notAllowed(r.Method, "POST")
		}
		if rp := f.formOrigin(r, tls); rp != nil {
			return rp
		}
		return &Reply{Status: http.StatusSeeOther, CType: textType, Body: []byte("logged out\n"), Hdr: []string{"Location", "/", "Set-Cookie", clearCookie(tls)}}
	case strings.HasPrefix(p, "/ui/"):
		if !get {
			return notAllowed(r.Method, "GET, HEAD")
		}
		a, ok := web.Lookup(strings.TrimPrefix(p, "/ui/"))
		if !ok || strings.HasSuffix(p, ".html") {
			return Text(http.StatusNotFound, "not found: "+p)
		}
		return &Reply{Status: http.StatusOK, CType: a.Type, Body: a.Body}
	}
	return nil
}

// page serves an HTML page to a browser holding a valid token (in the
// cookie, or ?token= once: then the cookie is set and the browser
// redirected to the URL without it); without one, the login form.
func (f *Front) page(r *http.Request, tls bool, name string) *Reply {
	q := r.URL.Query()
	if t := q.Get(auth.QueryParam); t != "" {
		if _, ok := f.cfg.Tokens.Lookup(t); !ok {
			f.m.Refused("http", "bad token")
			f.hub.AuditAuthFailure(r.RemoteAddr, "http", "token rejected")
			return loginPage(http.StatusUnauthorized, "That token was rejected.")
		}
		q.Del(auth.QueryParam)
		clean := r.URL.Path
		if len(q) > 0 {
			clean += "?" + q.Encode()
		}
		return &Reply{Status: http.StatusSeeOther, CType: textType, Body: []byte("see " + clean + "\n"),
			Hdr: []string{"Location", clean, "Set-Cookie", tokenCookie(t, tls), "Referrer-Policy", "no-referrer"}}
	}
	tok, _ := auth.TokenFromRequest(r)
	if tok == "" {
		return loginPage(http.StatusOK, "")
	}
	role, ok := f.cfg.Tokens.Lookup(tok)
	if !ok {
		f.m.Refused("http", "bad token")
		f.hub.AuditAuthFailure(r.RemoteAddr, "http", "token rejected")
		return loginPage(http.StatusUnauthorized, "Your token was rejected; log in again.", "Set-Cookie", clearCookie(tls))
	}
	if name == "terminal.html" {
		if f.cfg.Terminal == nil {
			return Text(http.StatusNotFound, "the terminal is off: start the daemon with --terminal CMD (e.g. --terminal /bin/bash)")
		}
		if role != auth.RoleClient && role != auth.RoleOperator {
			return Text(http.StatusForbidden, "the terminal is for client tokens (operator tokens may watch it); this token's role is "+role.String())
		}
	}
	a, _ := web.Lookup(name)
	return pageReply(http.StatusOK, a.Body)
}

// formOrigin refuses a form post from a page of another origin (the same
// policy as WebSocket handshakes).
func (f *Front) formOrigin(r *http.Request, tls bool) *Reply {
	if o := r.Header.Get("Origin"); !f.cfg.Origins.Allowed(o, r.Host, tls) {
		f.m.Refused("http", "origin")
		f.hub.AuditAuthFailure(r.RemoteAddr, "http", "login form from a foreign origin")
		return Text(http.StatusForbidden, "a form from origin "+strings.ReplaceAll(o, "\n", "")+" may not log in here")
	}
	return nil
}

// login checks the form's token and sets the cookie.
func (f *Front) login(r *http.Request, tls bool) *Reply {
	if rp := f.formOrigin(r, tls); rp != nil {
		return rp
	}
	if r.Body == nil {
		return loginPage(http.StatusBadRequest, "The form sent no token.")
	}
	b, err := io.ReadAll(io.LimitReader(r.Body, maxLoginBody+1))
	if err != nil || len(b) > maxLoginBody {
		return loginPage(http.StatusBadRequest, "The form could not be read.")
	}
	form, err := url.ParseQuery(string(b))
	tok := strings.TrimSpace(form.Get("token"))
	if err != nil || tok == "" {
		return loginPage(http.StatusBadRequest, "Paste a token into the form.")
	}
	if _, ok := f.cfg.Tokens.Lookup(tok); !ok {
		f.m.Refused("http", "bad token")
		f.hub.AuditAuthFailure(r.RemoteAddr, "http", "login: token rejected")
		return loginPage(http.StatusUnauthorized, "That token was rejected.")
	}
	return &Reply{Status: http.StatusSeeOther, CType: textType, Body: []byte("logged in\n"), Hdr: []string{"Location", "/", "Set-Cookie", tokenCookie(tok, tls)}}
}

// FormBody reports whether the gnet path reads r's body itself (the login
// form, at most maxLoginBody bytes) rather than discarding it.
func FormBody(r *http.Request) bool {
	return r.Method == http.MethodPost && r.URL.Path == "/login" && r.ContentLength > 0 && r.ContentLength <= maxLoginBody && len(r.TransferEncoding) == 0
}

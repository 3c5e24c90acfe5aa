package auth

import (
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const (
	tokA = "aaaaaaaaaaaaaaaaAAAA" // 20 chars
	tokB = "bbbbbbbbbbbbbbbb"     // exactly MinTokenLen
	tokC = "c-c_c.c~c!c$c%c&c'c*c+c^c`c|"
)

func TestRoleStringParse(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Role
	}{
		{"viewer", RoleViewer}, {"operator", RoleOperator}, {"client", RoleClient},
		{"Client", RoleClient}, {"VIEWER", RoleViewer},
	} {
		got, err := ParseRole(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("ParseRole(%q) = %v, %v", tc.in, got, err)
		}
		if strings.ToLower(tc.in) != got.String() {
			t.Errorf("%v.String() = %q", got, got.String())
		}
		var r Role
		if err := r.UnmarshalText([]byte(tc.in)); err != nil || r != tc.want {
			t.Errorf("UnmarshalText(%q) = %v, %v", tc.in, r, err)
		}
		b, err := got.MarshalText()
		if err != nil || string(b) != got.String() {
			t.Errorf("MarshalText(%v) = %q, %v", got, b, err)
		}
	}
	for _, bad := range []string{"", "admin", "clients", " client"} {
		_, err := ParseRole(bad)
		if !errors.Is(err, ErrUnknownRole) || !strings.Contains(err.Error(), fmt.Sprintf("%q", bad)) {
			t.Errorf("ParseRole(%q) error = %v", bad, err)
		}
		var r Role
		if err := r.UnmarshalText([]byte(bad)); err == nil {
			t.Errorf("UnmarshalText(%q) succeeded", bad)
		}
	}
	if Role(0).String() != "Role(0)" || Role(0).Valid() || Role(4).Valid() {
		t.Error("zero or out-of-range role treated as valid")
	}
	if _, err := Role(0).MarshalText(); err == nil {
		t.Error("MarshalText of the zero role succeeded")
	}
}

func TestMethodPolicy(t *testing.T) {
	// Columns: viewer, operator, client, zero role.
	requests := []struct {
		method string
		want   [4]bool
	}{
		{"bridge/hello", [4]bool{true, true, true, false}},
		{"bridge/sessions", [4]bool{true, true, true, false}},
		{"bridge/attach", [4]bool{true, true, true, false}},
		{"bridge/detach", [4]bool{true, true, true, false}},
		{"bridge/snapshot", [4]bool{true, true, true, false}},
		{"bridge/unknown", [4]bool{false, false, true, false}},
		{"bridge/", [4]bool{false, false, true, false}},
		{"session/cancel", [4]bool{false, true, true, false}},
		{"session/request_permission", [4]bool{false, false, true, false}},
		{"session/prompt", [4]bool{false, false, true, false}},
		{"session/new", [4]bool{false, false, true, false}},
		{"session/load", [4]bool{false, false, true, false}},
		{"initialize", [4]bool{false, false, true, false}},
		{"fs/write_text_file", [4]bool{false, false, true, false}},
		{"$/cancelRequest", [4]bool{false, false, true, false}},
		{"BRIDGE/HELLO", [4]bool{false, false, true, false}},
		{"", [4]bool{false, false, true, false}},
	}
	roles := [4]Role{RoleViewer, RoleOperator, RoleClient, 0}
	for _, tc := range requests {
		for i, r := range roles {
			if got := AllowRequest(r, tc.method); got != tc.want[i] {
				t.Errorf("AllowRequest(%v, %q) = %v, want %v", r, tc.method, got, tc.want[i])
			}
		}
	}
	answers := []struct {
		agentMethod string
		want        [4]bool
	}{
		{"session/request_permission", [4]bool{false, true, true, false}},
		{"fs/read_text_file", [4]bool{false, false, true, false}},
		{"fs/write_text_file", [4]bool{false, false, true, false}},
		{"terminal/create", [4]bool{false, false, true, false}},
		{"session/cancel", [4]bool{false, false, true, false}},
		{"", [4]bool{false, false, true, false}},
	}
	for _, tc := range answers {
		for i, r := range roles {
			if got := AllowAnswer(r, tc.agentMethod); got != tc.want[i] {
				t.Errorf("AllowAnswer(%v, %q) = %v, want %v", r, tc.agentMethod, got, tc.want[i])
			}
		}
	}
}

func TestParseTokensGood(t *testing.T) {
	file := "\ufeff# agentbridge tokens\n" +
		"\n" +
		"viewer " + tokA + "\n" +
		"   operator\t" + tokB + "   # the on-call operator\r\n" +
		"client " + tokC + "#no space before the comment\n" +
		"   \t  \n" +
		"# client zzzzzzzzzzzzzzzzzzzzz\n" +
		"CLIENT dddddddddddddddddddd" // no final newline
	toks, err := parseTokens("tokens", file)
	if err != nil {
		t.Fatal(err)
	}
	if toks.Len() != 4 {
		t.Fatalf("Len = %d, want 4", toks.Len())
	}
	for tok, want := range map[string]Role{tokA: RoleViewer, tokB: RoleOperator, tokC: RoleClient, "dddddddddddddddddddd": RoleClient} {
		if got, ok := toks.Lookup(tok); !ok || got != want {
			t.Errorf("Lookup(%q) = %v, %v; want %v", tok, got, ok, want)
		}
	}
	if _, ok := toks.Lookup("zzzzzzzzzzzzzzzzzzzzz"); ok {
		t.Error("a commented-out token was loaded")
	}
}

func TestParseTokensErrors(t *testing.T) {
	secret := "SECRETsecretSECRETsecret"
	for _, tc := range []struct {
		name, file, want string
	}{
		{"unknown role", "client " + tokA + "\nadmin " + secret + "\n", `line 2: unknown role "admin"`},
		{"swapped", "# c\n" + secret + " client\n", "line 2: unknown role (a 24-character value; is the line `TOKEN ROLE`"},
		{"role only", "\n\nviewer\n", "line 3: role viewer has no token"},
		{"token only", secret + "\n", "line 1: want `ROLE TOKEN`, found one field"},
		{"three fields", "client " + secret + " extra\n", "line 1: want `ROLE TOKEN`, found 3 fields"},
		{"space in token", "client SECRETsecret SECRETsecret\n", "line 1: want `ROLE TOKEN`, found 3 fields"},
		{"short", "client short" + "\n", "line 1: token is 5 characters, want at least 16"},
		{"short by one", "client " + secret[:15] + "\n", "line 1: token is 15 characters, want at least 16"},
		{"bad char", "client SECRET/secretSECRET\n", "line 1: token character 7 is not allowed"},
		{"quote char", "client SECRET\"secretSECRET\n", "line 1: token character 7 is not allowed"},
		{"non-ascii", "client SECRETésecretSECRET\n", "line 1: token character 7 is not allowed"},
		{"duplicate", "client " + secret + "\n# x\nviewer " + secret + "\n", "line 3: duplicate token (also on line 1)"},
		{"empty", "", "tokens: no tokens"},
		{"comments only", "# nothing\n\n  # here\n", "tokens: no tokens"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseTokens("tokens", tc.file)
			if !errors.Is(err, ErrTokensFile) {
				t.Fatalf("err = %v, want ErrTokensFile", err)
			}
			msg := err.Error()
			if !strings.Contains(msg, "auth: bad tokens file tokens") || !strings.Contains(msg, tc.want) {
				t.Fatalf("err = %q, want it to name the file and %q", msg, tc.want)
			}
			for _, leak := range []string{secret, "SECRETsecret", "SECRET/secret", "SECRETé", "short"} {
				if strings.Contains(msg, leak) && !strings.Contains(tc.want, leak) {
					t.Fatalf("err %q leaks token text %q", msg, leak)
				}
			}
		})
	}
}

// FuzzParseTokens checks, for any file, that the parser either fails or
// agrees with Lookup, and that no error ever repeats a token field.
func FuzzParseTokens(f *testing.F) {
	for _, s := range []string{
		"client " + tokA + "\n",
		"viewer " + tokA + "\noperator " + tokB + " # x\n",
		tokA + " client\n",
		"client " + tokA + "\nviewer " + tokA + "\n",
		"client " + tokA + " " + tokB + "\n",
		"admin " + tokA + "\n",
		"client abcdefghijklmno\"\n",
		"\ufeff\r\n#\nclient " + tokC + "\r\n",
		"client\n",
		"\ufeff 0000 0",
		"",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, file string) {
		toks, err := parseTokens("tokens", file)
		file = strings.TrimPrefix(file, "\ufeff")
		var tokenFields, roleFields []string
		for line := range strings.Lines(file) {
			if i := strings.IndexByte(line, '#'); i >= 0 {
				line = line[:i]
			}
			fs := strings.Fields(line)
			if len(fs) > 0 {
				roleFields = append(roleFields, fmt.Sprintf("%q", fs[0]))
				tokenFields = append(tokenFields, fs[1:]...)
			}
		}
		if err != nil {
			msg := err.Error()
		field:
			for _, tok := range tokenFields {
				if len(tok) < 13 {
					continue // shorter fields collide with the message's own words
				}
				for _, r := range roleFields {
					if strings.Contains(r, tok) {
						continue field // echoed as a role, which is allowed
					}
				}
				if strings.Contains(msg, tok) {
					t.Fatalf("error %q repeats token field %q", msg, tok)
				}
			}
			return
		}
		if toks.Len() == 0 {
			t.Fatal("parse succeeded with no tokens")
		}
		for line := range strings.Lines(file) {
			if i := strings.IndexByte(line, '#'); i >= 0 {
				line = line[:i]
			}
			fs := strings.Fields(line)
			if len(fs) != 2 {
				continue
			}
			want, _ := ParseRole(fs[0])
			if got, ok := toks.Lookup(fs[1]); !ok || got != want {
				t.Fatalf("Lookup(%q) = %v, %v; want %v", fs[1], got, ok, want)
			}
		}
	})
}

func TestLoadTokens(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "tokens")
	if err := os.WriteFile(good, []byte("operator "+tokA+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	toks, err := LoadTokens(good)
	if err != nil {
		t.Fatal(err)
	}
	if r, ok := toks.Lookup(tokA); !ok || r != RoleOperator {
		t.Fatalf("Lookup = %v, %v", r, ok)
	}

	bad := filepath.Join(dir, "bad")
	os.WriteFile(bad, []byte("client "+tokA+"\nclient nope\n"), 0o600)
	_, err = LoadTokens(bad)
	if !errors.Is(err, ErrTokensFile) || !strings.Contains(err.Error(), bad+" line 2:") {
		t.Fatalf("err = %v, want it to name %s line 2", err, bad)
	}

	missing := filepath.Join(dir, "missing")
	_, err = LoadTokens(missing)
	if !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), missing) {
		t.Fatalf("err = %v, want ErrNotExist naming the path", err)
	}

	huge := filepath.Join(dir, "huge")
	os.WriteFile(huge, []byte(strings.Repeat("# padding\n", maxTokensFile/10+1)), 0o600)
	_, err = LoadTokens(huge)
	if !errors.Is(err, ErrTokensFile) || !strings.Contains(err.Error(), "larger than") {
		t.Fatalf("err = %v, want a size error", err)
	}
}

func TestNewTokensAndLookup(t *testing.T) {
	toks, err := NewTokens([]Grant{{RoleViewer, tokA}, {RoleOperator, tokB}, {RoleClient, tokC}})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		token string
		want  Role
		ok    bool
	}{
		{tokA, RoleViewer, true},
		{tokB, RoleOperator, true},
		{tokC, RoleClient, true},
		{"", 0, false},
		{tokA[:len(tokA)-1], 0, false},
		{tokA + "A", 0, false},
		{strings.ToUpper(tokB), 0, false},
		{" " + tokA, 0, false},
		{"unknownunknownunknown", 0, false},
	} {
		got, ok := toks.Lookup(tc.token)
		if got != tc.want || ok != tc.ok {
			t.Errorf("Lookup(%q) = %v, %v; want %v, %v", tc.token, got, ok, tc.want, tc.ok)
		}
	}
	var nilToks *Tokens
	if _, ok := nilToks.Lookup(tokA); ok || nilToks.Len() != 0 {
		t.Error("nil Tokens matched")
	}
	empty, err := NewTokens(nil)
	if err != nil || empty.Len() != 0 {
		t.Fatalf("NewTokens(nil) = %v, %v", empty, err)
	}
	if _, ok := empty.Lookup(tokA); ok {
		t.Error("empty Tokens matched")
	}

	for _, tc := range []struct {
		grants []Grant
		want   string
	}{
		{[]Grant{{0, tokA}}, "grant 0: invalid role 0"},
		{[]Grant{{RoleClient, tokA}, {RoleViewer, "short"}}, "grant 1: token is 5 characters"},
		{[]Grant{{RoleClient, tokA}, {RoleViewer, tokB}, {RoleViewer, tokA}}, "grant 2: duplicate token (also grant 0)"},
		{[]Grant{{RoleClient, "has space in the token"}}, "grant 0: token character 4 is not allowed"},
		{[]Grant{{RoleClient, "hash#hash#hash#hash"}}, "grant 0: token character 5 is not allowed"},
	} {
		_, err := NewTokens(tc.grants)
		if !errors.Is(err, ErrBadToken) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("NewTokens(%v) = %v, want %q", tc.grants, err, tc.want)
		}
		for _, g := range tc.grants {
			if err != nil && strings.Contains(err.Error(), g.Token) {
				t.Errorf("error %q leaks a token", err)
			}
		}
	}
}

func TestGenerateToken(t *testing.T) {
	a, err := GenerateToken()
	if err != nil {
		t.Fatal(err)
	}
	b, _ := GenerateToken()
	if a == b {
		t.Fatal("two generated tokens are equal")
	}
	raw, err := base64.RawURLEncoding.DecodeString(a)
	if err != nil || len(raw) != 32 || len(a) != 43 {
		t.Fatalf("token %q: %d bytes, %v", a, len(raw), err)
	}
	if err := checkToken(a); err != nil {
		t.Fatalf("generated token fails the token rules: %v", err)
	}
}

func TestWriteTokenFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "agentbridge.token")
	// An existing, too-open file is replaced, not rewritten in place.
	if err := os.WriteFile(path, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	tok, _ := GenerateToken()
	if err := WriteTokenFile(path, tok); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode = %v, want 0600", fi.Mode().Perm())
	}
	toks, err := LoadTokens(path)
	if err != nil {
		t.Fatalf("written file does not load as a tokens file: %v", err)
	}
	if r, ok := toks.Lookup(tok); !ok || r != RoleClient || toks.Len() != 1 {
		t.Fatalf("Lookup = %v, %v (len %d), want the token as client", r, ok, toks.Len())
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Fatalf("directory holds %d entries, want only the token file (temp file left behind?)", len(entries))
	}

	if err := WriteTokenFile(path, "short"); !errors.Is(err, ErrBadToken) || strings.Contains(err.Error(), "short") {
		t.Fatalf("bad token: err = %v", err)
	}
	if err := WriteTokenFile(filepath.Join(dir, "no", "such", "dir", "t"), tok); err == nil || strings.Contains(err.Error(), tok) {
		t.Fatalf("missing directory: err = %v", err)
	}
	if got, _ := LoadTokens(path); got.Len() != 1 {
		t.Fatal("a failed write disturbed the existing file")
	}
	entries, _ = os.ReadDir(dir)
	if len(entries) != 1 {
		t.Fatalf("failed writes left %d entries", len(entries))
	}
}

func TestNewOriginPolicy(t *testing.T) {
	good := []string{"*", "https://Example.COM", "http://localhost:3000/", " https://a.example:8443 ",
		"http://[::1]:8080", "chrome-extension://abcdefghijklmnop", "HTTP://UPPER.example"}
	if _, err := NewOriginPolicy(good); err != nil {
		t.Fatalf("NewOriginPolicy(%q): %v", good, err)
	}
	for _, tc := range []struct{ entry, why string }{
		{"example.com", "want scheme://host[:port]"},
		{"localhost:3000", "want scheme://host[:port]"},
		{"https://", "want scheme://host[:port]"},
		{"wss://example.com", "not wss"},
		{"ws://example.com", "not ws"},
		{"https://user@example.com", "user info"},
		{"https://example.com/app", "no path"},
		{"https://example.com?x=1", "no query"},
		{"https://example.com#frag", "no query or fragment"},
		{"https://example.com:", "empty port"},
		{"https://example.com:0", "bad port"},
		{"https://example.com:65536", "bad port"},
		{"https://example.com:08443", "bad port"},
		{"https://:443", "missing host"},
		{"null", "want scheme://host[:port]"},
		{"", "want scheme://host[:port]"},
	} {
		_, err := NewOriginPolicy([]string{"https://fine.example", tc.entry})
		if !errors.Is(err, ErrBadOrigin) || !strings.Contains(err.Error(), fmt.Sprintf("%q", tc.entry)) || !strings.Contains(err.Error(), tc.why) {
			t.Errorf("NewOriginPolicy(%q) = %v, want ErrBadOrigin naming it and %q", tc.entry, err, tc.why)
		}
	}
}

func TestOriginAllowed(t *testing.T) {
	listed, err := NewOriginPolicy([]string{"https://ide.example.com", "http://localhost:3000", "http://[::1]:8080", "chrome-extension://abc"})
	if err != nil {
		t.Fatal(err)
	}
	none, _ := NewOriginPolicy(nil)
	star, _ := NewOriginPolicy([]string{"*"})
	const host = "bridge.example:8931"
	for _, tc := range []struct {
		policy      *OriginPolicy
		origin      string
		host        string
		tls         bool
		want        bool
		description string
	}{
		{none, "", host, false, true, "no Origin: not a browser"},
		{none, "null", host, false, false, "null refused"},
		{listed, "null", host, false, false, "null refused even with a list"},
		{star, "null", host, false, true, "* allows null"},
		{star, "https://evil.example", host, false, true, "* allows any"},
		{none, "https://evil.example", host, false, false, "unlisted"},
		{listed, "https://ide.example.com", host, false, true, "listed"},
		{listed, "https://IDE.Example.COM", host, false, true, "host case-insensitive"},
		{listed, "HTTPS://ide.example.com", host, false, true, "scheme case-insensitive"},
		{listed, "https://ide.example.com:443", host, false, true, "explicit default port"},
		{listed, "http://ide.example.com", host, false, false, "scheme differs"},
		{listed, "https://ide.example.com:8443", host, false, false, "port differs"},
		{listed, "https://sub.ide.example.com", host, false, false, "subdomain is another origin"},
		{listed, "https://ide.example.com.evil.example", host, false, false, "suffix attack"},
		{listed, "https://ide.example.com/", host, false, false, "a browser never sends a path"},
		{listed, "http://localhost:3000", host, false, true, "listed with port"},
		{listed, "http://localhost", host, false, false, "listed port required"},
		{listed, "http://[::1]:8080", host, false, true, "IPv6 literal"},
		{listed, "chrome-extension://abc", host, false, true, "extension origin"},
		{listed, "chrome-extension://abd", host, false, false, "other extension"},
		{listed, "garbage", host, false, false, "unparseable"},
		{none, "http://bridge.example:8931", host, false, true, "same origin"},
		{none, "http://BRIDGE.example:8931", "bridge.EXAMPLE:8931", false, true, "same origin, mixed case"},
		{none, "https://bridge.example:8931", host, true, true, "same origin over TLS"},
		{none, "http://bridge.example:8931", host, true, false, "scheme must match the connection"},
		{none, "https://bridge.example:8931", host, false, false, "https page, plain connection (TLS proxy): needs --allow-origin"},
		{none, "http://bridge.example", "bridge.example", false, true, "default port 80 on both"},
		{none, "http://bridge.example:80", "bridge.example", false, true, "explicit 80 vs implied"},
		{none, "https://bridge.example", "bridge.example:443", true, true, "implied 443 vs explicit"},
		{none, "http://bridge.example", "bridge.example:8931", false, false, "port differs from Host"},
		{none, "http://[::1]:8931", "[::1]:8931", false, true, "IPv6 same origin"},
		{none, "http://[::1]", "[::1]", false, true, "IPv6 without port"},
		{none, "http://127.0.0.1:8931", "localhost:8931", false, false, "different names are different origins"},
		{none, "http://bridge.example:8931", "", false, false, "no Host header"},
		{none, "http://bridge.example:8931", "bridge.example:x", false, false, "bad Host port"},
		{none, "http://bridge.example:8931", "::1", false, false, "unbracketed IPv6 Host"},
	} {
		if got := tc.policy.Allowed(tc.origin, tc.host, tc.tls); got != tc.want {
			t.Errorf("%s: Allowed(%q, %q, tls=%v) = %v, want %v", tc.description, tc.origin, tc.host, tc.tls, got, tc.want)
		}
	}
}

func TestTokenFromRequest(t *testing.T) {
	type req struct {
		auth     string
		protos   []string
		query    string
		cookie   string
		wantTok  string
		wantProt string
	}
	for name, tc := range map[string]req{
		"nothing":            {},
		"bearer":             {auth: "Bearer " + tokA, wantTok: tokA},
		"bearer lower":       {auth: "bearer " + tokA, wantTok: tokA},
		"bearer spaces":      {auth: "  Bearer   " + tokA + "  ", wantTok: tokA},
		"bearer empty":       {auth: "Bearer ", query: tokB, wantTok: tokB},
		"basic skipped":      {auth: "Basic dXNlcjpwYXNz", cookie: tokB, wantTok: tokB},
		"subprotocol":        {protos: []string{"agentbridge.token." + tokA}, wantTok: tokA, wantProt: "agentbridge.token." + tokA},
		"subprotocol list":   {protos: []string{"acp, agentbridge.token." + tokB + " ,other"}, wantTok: tokB, wantProt: "agentbridge.token." + tokB},
		"subprotocol header": {protos: []string{"acp", "agentbridge.token." + tokC}, wantTok: tokC, wantProt: "agentbridge.token." + tokC},
		"subprotocol empty":  {protos: []string{"agentbridge.token.", "agentbridge.token." + tokB}, wantTok: tokB, wantProt: "agentbridge.token." + tokB},
		"other protocols":    {protos: []string{"acp", "agentbridge.tokenx"}, cookie: tokA, wantTok: tokA},
		"query":              {query: tokA, wantTok: tokA},
		"cookie":             {cookie: tokA, wantTok: tokA},
		"bearer first":       {auth: "Bearer " + tokA, protos: []string{"agentbridge.token." + tokB}, query: tokC, cookie: tokC, wantTok: tokA},
		"subprotocol second": {protos: []string{"agentbridge.token." + tokB}, query: tokC, cookie: tokA, wantTok: tokB, wantProt: "agentbridge.token." + tokB},
		"query third":        {query: tokC, cookie: tokA, wantTok: tokC},
	} {
		t.Run(name, func(t *testing.T) {
			target := "/acp"
			if tc.query != "" {
				target += "?x=1&token=" + url.QueryEscape(tc.query)
			}
			r := httptest.NewRequest(http.MethodGet, target, nil)
			if tc.auth != "" {
				r.Header.Set("Authorization", tc.auth)
			}
			for _, p := range tc.protos {
				r.Header.Add("Sec-WebSocket-Protocol", p)
			}
			if tc.cookie != "" {
				r.AddCookie(&http.Cookie{Name: "other", Value: "x"})
				r.AddCookie(&http.Cookie{Name: CookieName, Value: tc.cookie})
			}
			tok, prot := TokenFromRequest(r)
			if tok != tc.wantTok || prot != tc.wantProt {
				t.Fatalf("TokenFromRequest = %q, %q; want %q, %q", tok, prot, tc.wantTok, tc.wantProt)
			}
		})
	}
	// A query token is URL-decoded.
	r := httptest.NewRequest(http.MethodGet, "/acp?token=a%2Bb%2Bcccccccccccccccc", nil)
	if tok, _ := TokenFromRequest(r); tok != "a+b+cccccccccccccccc" {
		t.Fatalf("query token = %q", tok)
	}
}

func BenchmarkLookup(b *testing.B) {
	for _, n := range []int{1, 10, 100} {
		grants := make([]Grant, n)
		for i := range grants {
			tok, _ := GenerateToken()
			grants[i] = Grant{RoleClient, tok}
		}
		toks, err := NewTokens(grants)
		if err != nil {
			b.Fatal(err)
		}
		hit, miss := grants[n-1].Token, "missmissmissmissmissmissmissmissmissmissmis"
		b.Run(fmt.Sprintf("tokens=%d/hit", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				toks.Lookup(hit)
			}
		})
		b.Run(fmt.Sprintf("tokens=%d/miss", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				toks.Lookup(miss)
			}
		})
	}
}
